//! One point: its topic and the keys every bus kind shares (scale, publish, writable, ...).

use std::path::Path;

use super::{at, noun, Class, MapValue, PayloadName, PointFile, PublishName, TypeName, Validator};
use crate::{
    model::{GpioMode, Parser, Payload, Point, PublishMode, Table, ValueType, WordOrder},
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

impl Validator {
    pub(super) fn point(
        &mut self,
        file: &Path,
        path: &str,
        p: &PointFile,
        class: Class,
        parser: Option<&Parser>,
        parser_failed: bool,
    ) -> Option<Point> {
        let errors_before = self.error_count();
        let topic = p.topic.value.clone();
        match check_topic(&topic) {
            Err(e) => self.error(file, at(&p.topic), format!("{path}.topic"), e, None),
            Ok(Some(w)) => self.warn(file, at(&p.topic), format!("{path}.topic"), w),
            Ok(None) => {}
        }
        let (table, address, ty, order, bit, gpio, uart) = match class {
            Class::Gpio => {
                let g = self.gpio_part(file, path, p);
                let table = match g.mode {
                    GpioMode::Input { .. } => Table::Discrete,
                    GpioMode::Output { .. } => Table::Coil,
                };
                let pin = u16::from(g.pin);
                (
                    table,
                    pin,
                    ValueType::Bool,
                    WordOrder::Abcd,
                    None,
                    Some(g),
                    None,
                )
            }
            Class::Uart => {
                let (ty, u) = self.uart_part(file, path, p, parser, parser_failed);
                let table = if u.command.is_some() {
                    Table::Holding
                } else {
                    Table::Input
                };
                (table, 0, ty, WordOrder::Abcd, None, None, Some(Box::new(u)))
            }
            Class::Modbus => {
                let (table, address, ty, order, bit) = self.modbus_part(file, path, p);
                (table, address, ty, order, bit, None, None)
            }
        };
        let numeric = ty.is_numeric();
        for (name, f) in [("scale", &p.scale), ("offset", &p.offset)] {
            if let Some(s) = f {
                if gpio.is_some() {
                    // Reported by `gpio_part`.
                } else if !numeric {
                    self.error(
                        file,
                        at(s),
                        format!("{path}.{name}"),
                        format!("`{name}` only applies to numeric types, this point is `{ty}`"),
                        None,
                    );
                } else if !s.value.is_finite() {
                    self.error(
                        file,
                        at(s),
                        format!("{path}.{name}"),
                        format!("`{name}` must be a finite number"),
                        None,
                    );
                }
            }
        }
        if let Some(s) = &p.scale {
            if s.value == 0.0 {
                self.error(
                    file,
                    at(s),
                    format!("{path}.scale"),
                    "scale 0 would publish 0 for every reading",
                    Some("use e.g. `scale: 0.1` for tenths".into()),
                );
            }
        }
        let precision = self.int_in(
            file,
            p.precision.as_ref(),
            &format!("{path}.precision"),
            "precision",
            (0, 12),
            -1,
        );
        let qos = self.int_in(
            file,
            p.qos.as_ref(),
            &format!("{path}.qos"),
            "qos",
            (0, 2),
            0,
        );
        let publish = match p.publish.as_ref().map(|s| s.value) {
            Some(PublishName::EveryPoll) if gpio.is_some() => {
                if let Some(e) = &p.publish {
                    self.error(
                        file,
                        at(e),
                        format!("{path}.publish"),
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
                        file,
                        at(db),
                        format!("{path}.deadband"),
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
                        if gpio.is_some() {
                            // Reported by `gpio_part`.
                        } else if !numeric {
                            self.error(
                                file,
                                at(db),
                                format!("{path}.deadband"),
                                format!("`deadband` only applies to numeric types, this point is `{ty}`"),
                                None,
                            );
                        }
                        db.value
                    }
                    Some(db) => {
                        self.error(
                            file,
                            at(db),
                            format!("{path}.deadband"),
                            format!("deadband {} must be zero or positive", db.value),
                            None,
                        );
                        0.0
                    }
                };
                PublishMode::OnChange { deadband }
            }
        };
        let heartbeat = match &p.heartbeat {
            Some(h) if h.value.0.is_zero() => {
                self.error(
                    file,
                    at(h),
                    format!("{path}.heartbeat"),
                    "heartbeat must be greater than zero",
                    Some("remove it to publish only on change".into()),
                );
                None
            }
            Some(h) => Some(h.value.0),
            None => None,
        };
        let writable = match (&gpio, &p.writable) {
            // GPIO outputs are writable unless the mapping says otherwise.
            (Some(g), w) => {
                let out = matches!(g.mode, GpioMode::Output { .. });
                let w_val = w.as_ref().map_or(out, |w| w.value);
                if let (Some(w), true) = (w, w_val && !out) {
                    self.error(
                        file,
                        at(w),
                        format!("{path}.writable"),
                        "a GPIO input cannot be written",
                        Some("use `mode: output` for a line the gateway drives".into()),
                    );
                }
                w_val && out
            }
            (None, w) if uart.is_some() => {
                let has_command = uart.as_ref().is_some_and(|u| u.command.is_some());
                let w_val = w.as_ref().map_or(has_command, |w| w.value);
                if let (Some(w), true) = (w, w_val && !has_command) {
                    self.error(
                        file,
                        at(w),
                        format!("{path}.writable"),
                        "a UART point needs `command` to be writable",
                        Some(r#"add e.g. `command: "SET {value}\n"`"#.into()),
                    );
                }
                w_val && has_command
            }
            (None, w) => w.as_ref().is_some_and(|w| w.value),
        };
        if let (Some(w), true) = (
            &p.writable,
            gpio.is_none()
                && uart.is_none()
                && writable
                && matches!(table, Table::Input | Table::Discrete),
        ) {
            self.error(
                file,
                at(w),
                format!("{path}.writable"),
                format!("{}s are read-only in Modbus", noun(table)),
                Some(
                    "use `table: holding` (registers) or `table: coil` (bits) for writable points"
                        .into(),
                ),
            );
        }
        for (name, f) in [("min", &p.min), ("max", &p.max)] {
            if let Some(v) = f {
                if gpio.is_some() {
                    // Reported by `gpio_part`.
                } else if !numeric {
                    self.error(
                        file,
                        at(v),
                        format!("{path}.{name}"),
                        format!("`{name}` only applies to numeric types, this point is `{ty}`"),
                        None,
                    );
                } else if !v.value.is_finite() {
                    self.error(
                        file,
                        at(v),
                        format!("{path}.{name}"),
                        format!("`{name}` must be a finite number"),
                        None,
                    );
                }
            }
        }
        if let (Some(lo), Some(hi)) = (&p.min, &p.max) {
            if lo.value > hi.value {
                self.error(
                    file,
                    at(hi),
                    format!("{path}.max"),
                    format!("max {} is below min {}", hi.value, lo.value),
                    Some("swap them".into()),
                );
            }
        }
        let mut value_map = Vec::new();
        if let Some(vm) = &p.values {
            if matches!(ty, ValueType::String { .. }) {
                self.error(
                    file,
                    at(vm),
                    format!("{path}.values"),
                    "`values` does not apply to `string` points",
                    None,
                );
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
                        file,
                        at(vm),
                        format!("{path}.values.{k}"),
                        format!("`{k}: {n}` is not a usable value for a `{ty}` point"),
                        Some("use e.g. `values: {ON: 1, OFF: 0}`".into()),
                    );
                }
                value_map.push((k.clone(), n));
            }
        }
        if self.error_count() > errors_before {
            return None;
        }
        Some(Point {
            slot: 0,
            writable,
            min: p.min.as_ref().map(|v| v.value),
            max: p.max.as_ref().map(|v| v.value),
            value_map,
            topic,
            table,
            address,
            ty,
            order,
            bit,
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
            gpio,
            uart,
        })
    }

    /// `length` on a point that is not a `string`.
    pub(super) fn length_only_for_strings(
        &mut self,
        file: &Path,
        path: &str,
        p: &PointFile,
        ty: ValueType,
    ) {
        if let (Some(l), false) = (&p.length, matches!(ty, ValueType::String { .. })) {
            self.error(
                file,
                at(l),
                format!("{path}.length"),
                format!("`length` only applies to `string` points, this one is `{ty}`"),
                Some("remove `length` or set `type: string`".into()),
            );
        }
    }
}
