//! One point: its topic, the half its bus kind decides (`modbus.rs`, `gpio.rs`,
//! `uart.rs`), and the keys every kind shares (scale, publish, writable, values, ...).

use super::{
    noun, Class, Cx, MapValue, PayloadName, PointFile, PublishName, Spanned, TypeName, Validator,
};
use crate::{
    model::{GpioMode, Parser, Payload, Point, PublishMode, Source, Table, ValueType},
    topics::check_topic,
};

/// The value type a type name stands for; `string` takes its length from `string`.
pub(super) fn value_type(name: TypeName, string: impl FnOnce() -> ValueType) -> ValueType {
    match name {
        TypeName::Bool => ValueType::Bool,
        TypeName::U16 => ValueType::U16,
        TypeName::I16 => ValueType::I16,
        TypeName::U32 => ValueType::U32,
        TypeName::I32 => ValueType::I32,
        TypeName::U64 => ValueType::U64,
        TypeName::I64 => ValueType::I64,
        TypeName::F32 => ValueType::F32,
        TypeName::F64 => ValueType::F64,
        TypeName::String => string(),
    }
}

/// The fields of a [`Point`] that its bus kind decides: the value type and the source.
pub(super) struct KindParts {
    /// Value type.
    pub(super) ty: ValueType,
    /// Where the value lives on the bus.
    pub(super) source: Source,
}

impl Validator {
    /// One point (`cx`) of a device on a bus of `class`; `None` when it has an error.
    pub(super) fn point(
        &mut self,
        cx: &Cx,
        p: &PointFile,
        class: Class,
        parser: Option<&Parser>,
        parser_failed: bool,
    ) -> Option<Point> {
        let errors_before = self.error_count();
        let topic = p.topic.value.clone();
        let tcx = cx.at("topic");
        match check_topic(&topic) {
            Err(e) => self.error(&tcx, &p.topic, e, None),
            Ok(Some(w)) => self.warn(&tcx, &p.topic, w),
            Ok(None) => {}
        }
        self.dotted_topic(&tcx, &p.topic);
        let KindParts { ty, mut source } = match class {
            Class::Gpio => KindParts {
                ty: ValueType::Bool,
                source: Source::Gpio(self.gpio_part(cx, p)),
            },
            Class::Uart => {
                let (ty, u) = self.uart_part(cx, p, parser, parser_failed);
                KindParts {
                    ty,
                    source: Source::Uart(Box::new(u)),
                }
            }
            Class::Modbus => self.modbus_part(cx, p),
        };
        let is_gpio = matches!(source, Source::Gpio(_));
        // The type the numeric keys are checked against; GPIO points reject those keys
        // in `gpio_part`.
        let numeric_ty = (!is_gpio).then_some(ty);
        self.numeric_keys(cx, [("scale", &p.scale), ("offset", &p.offset)], numeric_ty);
        if let Some(s) = &p.scale {
            if s.value == 0.0 {
                self.error(
                    &cx.at("scale"),
                    s,
                    "scale 0 would publish 0 for every reading",
                    Some("use e.g. `scale: 0.1` for tenths".into()),
                );
            }
        }
        let precision = self.int_in(
            &cx.at("precision"),
            p.precision.as_ref(),
            "precision",
            (0, 12),
            -1,
        );
        let qos = self.int_in(&cx.at("qos"), p.qos.as_ref(), "qos", (0, 2), 0);
        let publish = self.publish_mode(cx, p, numeric_ty, is_gpio);
        let heartbeat = self.heartbeat(cx, p);
        let writable = self.writable(cx, p, &source);
        // Writes (#23): write_address, write_only, rewrite_every (`writes.rs`).
        let writes = self.writes(cx, p, &mut source, ty, writable);
        // Scale factor registers (#25, `scale_register.rs`).
        self.scale_register(cx, p, &mut source, ty, writable || writes.write_only);
        self.min_max(cx, p, numeric_ty);
        let value_map = self.value_map(cx, p, ty);
        let poll_interval = self.point_poll_interval(cx, p, class);
        if let (true, Some(f)) = (writes.write_only, p.poll_interval.as_ref()) {
            self.warn(
                &cx.at("poll_interval"),
                f,
                "a `write_only` point is never read: its `poll_interval` does nothing",
            );
        }
        let key = self.point_key(cx, p);
        if self.error_count() > errors_before {
            return None;
        }
        let mut point = Point {
            slot: 0,
            writable: writable || writes.write_only,
            min: p.min.as_ref().map(|v| v.value),
            max: p.max.as_ref().map(|v| v.value),
            value_map,
            topic,
            ty,
            scale: p.scale.as_ref().map_or(1.0, |s| s.value),
            offset: p.offset.as_ref().map_or(0.0, |s| s.value),
            precision: u8::try_from(precision).ok(),
            unit: p.unit.as_ref().map(|u| u.value.clone()),
            retain: p.retain.as_ref().is_none_or(|r| r.value),
            qos: qos as u8,
            payload: match p.payload.as_ref().map(|s| s.value) {
                Some(PayloadName::Json) => Payload::Json,
                _ => Payload::Plain,
            },
            publish,
            heartbeat,
            source,
            ha_overrides: None,
            poll_interval,
            write_only: writes.write_only,
            rewrite_every: writes.rewrite_every,
            key,
        };
        let ha = self.point_ha(cx, p.homeassistant.as_ref(), &point);
        point.ha_overrides = (ha != crate::model::PointHa::default()).then(|| Box::new(ha));
        if self.error_count() > errors_before {
            return None;
        }
        Some(point)
    }

    /// `heartbeat`: republish an unchanged value this often.
    fn heartbeat(&mut self, cx: &Cx, p: &PointFile) -> Option<std::time::Duration> {
        match &p.heartbeat {
            Some(h) if h.value.0.is_zero() => {
                self.error(
                    &cx.at("heartbeat"),
                    h,
                    "heartbeat must be greater than zero",
                    Some("remove it to publish only on change".into()),
                );
                None
            }
            Some(h) => Some(h.value.0),
            None => None,
        }
    }

    /// `min` and `max` of a command: finite numbers on a numeric point, in order.
    fn min_max(&mut self, cx: &Cx, p: &PointFile, numeric_ty: Option<ValueType>) {
        self.numeric_keys(cx, [("min", &p.min), ("max", &p.max)], numeric_ty);
        if let (Some(lo), Some(hi)) = (&p.min, &p.max) {
            if lo.value > hi.value {
                self.error(
                    &cx.at("max"),
                    hi,
                    format!("max {} is below min {}", hi.value, lo.value),
                    Some("swap them".into()),
                );
            }
        }
    }

    /// Keys that take a finite number on a numeric point of type `ty` (`None`: checked
    /// elsewhere).
    fn numeric_keys(
        &mut self,
        cx: &Cx,
        keys: [(&str, &Option<Spanned<f64>>); 2],
        ty: Option<ValueType>,
    ) {
        let Some(ty) = ty else {
            return;
        };
        for (name, f) in keys {
            if let Some(v) = f {
                if !ty.is_numeric() {
                    self.error(
                        &cx.at(name),
                        v,
                        format!("`{name}` only applies to numeric types, this point is `{ty}`"),
                        None,
                    );
                } else if !v.value.is_finite() {
                    self.error(
                        &cx.at(name),
                        v,
                        format!("`{name}` must be a finite number"),
                        None,
                    );
                }
            }
        }
    }

    /// `publish` and `deadband`; `ty` is `None` on GPIO points (checked in `gpio_part`).
    fn publish_mode(
        &mut self,
        cx: &Cx,
        p: &PointFile,
        ty: Option<ValueType>,
        gpio: bool,
    ) -> PublishMode {
        match p.publish.as_ref().map(|s| s.value) {
            Some(PublishName::EveryPoll) if gpio => {
                if let Some(e) = &p.publish {
                    self.error(
                        &cx.at("publish"),
                        e,
                        "GPIO points are not polled: inputs publish every debounced change",
                        Some(
                            "remove `publish`; add `heartbeat: 5m` to republish an unchanged state"
                                .into(),
                        ),
                    );
                }
                PublishMode::OnChange { deadband: 0.0 }
            }
            Some(PublishName::EveryPoll) => {
                if let Some(db) = &p.deadband {
                    self.error(
                        &cx.at("deadband"),
                        db,
                        "`deadband` only applies to `publish: on_change`",
                        Some("remove `deadband` or use `publish: on_change`".into()),
                    );
                }
                PublishMode::EveryPoll
            }
            _ => {
                let deadband = match &p.deadband {
                    None => 0.0,
                    Some(db) if db.value.is_finite() && db.value >= 0.0 => {
                        if let Some(ty) = ty.filter(|t| !t.is_numeric()) {
                            self.error(
                                &cx.at("deadband"),
                                db,
                                format!("`deadband` only applies to numeric types, this point is `{ty}`"),
                                None,
                            );
                        }
                        db.value
                    }
                    Some(db) => {
                        self.error(
                            &cx.at("deadband"),
                            db,
                            format!("deadband {} must be zero or positive", db.value),
                            None,
                        );
                        0.0
                    }
                };
                PublishMode::OnChange { deadband }
            }
        }
    }

    /// Whether `<topic>/set` writes the point: GPIO outputs and UART points with a
    /// `command` are writable by default; Modbus inputs and discretes never are.
    fn writable(&mut self, cx: &Cx, p: &PointFile, source: &Source) -> bool {
        let wcx = cx.at("writable");
        let w = &p.writable;
        match source {
            // GPIO outputs are writable unless the mapping says otherwise.
            Source::Gpio(g) => {
                let out = matches!(g.mode, GpioMode::Output { .. });
                let w_val = w.as_ref().map_or(out, |w| w.value);
                if let (Some(w), true) = (w, w_val && !out) {
                    self.error(
                        &wcx,
                        w,
                        "a GPIO input cannot be written",
                        Some("use `mode: output` for a line the gateway drives".into()),
                    );
                }
                w_val && out
            }
            Source::Uart(u) => {
                let has_command = u.command.is_some();
                let w_val = w.as_ref().map_or(has_command, |w| w.value);
                if let (Some(w), true) = (w, w_val && !has_command) {
                    self.error(
                        &wcx,
                        w,
                        "a UART point needs `command` to be writable",
                        Some(r#"add e.g. `command: "SET {value}\n"`"#.into()),
                    );
                }
                w_val && has_command
            }
            Source::Modbus(m) => {
                let writable = w.as_ref().is_some_and(|w| w.value);
                if let (Some(w), true) = (
                    w,
                    writable && matches!(m.table, Table::Input | Table::Discrete),
                ) {
                    self.error(
                        &wcx,
                        w,
                        format!("{}s are read-only in Modbus", noun(m.table)),
                        Some(
                            "use `table: holding` (registers) or `table: coil` (bits) for writable points"
                                .into(),
                        ),
                    );
                }
                writable
            }
        }
    }

    /// `values`: names for values, each usable for a point of type `ty`.
    fn value_map(&mut self, cx: &Cx, p: &PointFile, ty: ValueType) -> Vec<(String, f64)> {
        let mut value_map = Vec::new();
        let Some(vm) = &p.values else {
            return value_map;
        };
        let vcx = cx.at("values");
        if matches!(ty, ValueType::String { .. }) {
            self.error(&vcx, vm, "`values` does not apply to `string` points", None);
        }
        for (k, v) in &vm.value {
            let n = match v {
                MapValue::Bool(b) => f64::from(u8::from(*b)),
                MapValue::Number(n) => *n,
            };
            if k.trim().is_empty()
                || !n.is_finite()
                || (ty == ValueType::Bool && n != 0.0 && n != 1.0)
            {
                self.error(
                    &vcx.at(k),
                    vm,
                    format!("`{k}: {n}` is not a usable value for a `{ty}` point"),
                    Some("use e.g. `values: {ON: 1, OFF: 0}`".into()),
                );
            }
            value_map.push((k.clone(), n));
        }
        value_map
    }

    /// `length` on a point that is not a `string`.
    pub(super) fn length_only_for_strings(&mut self, cx: &Cx, p: &PointFile, ty: ValueType) {
        if let (Some(l), false) = (&p.length, matches!(ty, ValueType::String { .. })) {
            self.error(
                &cx.at("length"),
                l,
                format!("`length` only applies to `string` points, this one is `{ty}`"),
                Some("remove `length` or set `type: string`".into()),
            );
        }
    }
}
