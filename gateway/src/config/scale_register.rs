//! A point's `scale_register` (the SunSpec way of scaling: the value × 10^sf, sf an `i16`
//! at another register of the same table), and the warning on topics an upstream RabbitMQ
//! would rename.

use super::{noun, Cx, PointFile, Spanned, Validator};
use crate::model::{Source, Table, ValueType};

impl Validator {
    /// `scale_register` of a point of type `ty` whose source is `source` (set into its
    /// Modbus half); `writable` when the point takes commands.
    pub(super) fn scale_register(
        &mut self,
        cx: &Cx,
        p: &PointFile,
        source: &mut Source,
        ty: ValueType,
        writable: bool,
    ) {
        let Some(sr) = &p.scale_register else {
            return;
        };
        let scx = cx.at("scale_register");
        let Source::Modbus(m) = source else {
            self.error(
                &scx,
                sr,
                "`scale_register` applies to Modbus points only",
                Some("remove it, or use `scale`".into()),
            );
            return;
        };
        let problem = if matches!(m.table, Table::Coil | Table::Discrete) {
            Some((
                format!("a {} has no scale factor", noun(m.table)),
                "`scale_register` is for `holding` and `input` register values",
            ))
        } else if matches!(ty, ValueType::Bool | ValueType::String { .. }) {
            Some((
                format!("a `{ty}` point cannot be scaled"),
                "`scale_register` is for numbers",
            ))
        } else if writable {
            Some((
                "a point with `scale_register` cannot be written".to_string(),
                "remove `writable` (a command would need the factor read at the moment of writing)",
            ))
        } else {
            None
        };
        if let Some((msg, hint)) = problem {
            self.error(&scx, sr, msg, Some(hint.into()));
            return;
        }
        if !(0..=65535).contains(&sr.value) {
            self.error(
                &scx,
                sr,
                format!("address {} is outside 0–65535", sr.value),
                Some("the factor's register address, 0-based as `address`".into()),
            );
            return;
        }
        let own = i64::from(m.address)..i64::from(m.address) + i64::from(m.count(ty));
        if own.contains(&sr.value) {
            self.error(
                &scx,
                sr,
                format!(
                    "register {} is the point's own value, not a scale factor",
                    sr.value
                ),
                Some(
                    "give the address of the factor's own register (SunSpec: the `_SF` one)".into(),
                ),
            );
            return;
        }
        m.scale_register = Some(sr.value as u16);
    }

    /// A warning for a topic with `.` when an upstream broker is configured: RabbitMQ's
    /// MQTT plugin turns `.` into `/`.
    pub(super) fn dotted_topic(&mut self, cx: &Cx, topic: &Spanned<String>) {
        if !self.upstream || !topic.value.contains('.') {
            return;
        }
        self.push(
            super::Severity::Warning,
            cx.file,
            super::at(topic),
            cx.path.clone(),
            format!("topic `{}` contains `.`", topic.value),
            Some(
                "if the upstream broker is RabbitMQ, its MQTT plugin turns `.` into `/`: the \
                 data arrives under another name and its `/set` never reaches the gateway; \
                 use `_` or `-`"
                    .into(),
            ),
        );
    }
}
