//! Scale factor registers (`scale_register`, as SunSpec devices encode their values): a
//! point's value is × 10^sf, sf the `i16` at another register of the same table.
//!
//! Each distinct factor register of a device is one more item of its read plan (after
//! the points' items), so the planner reads it in the same request as its values where
//! it can; it is never published. A factor counts only in the poll that read it: a value
//! is published once its factor was read in the same or an earlier read of that poll (a
//! value read before its factor waits for it until the poll ends, then is dropped). A
//! factor outside −10..10, or SunSpec's "not implemented" 0x8000, publishes none of its
//! values, with one warning until it is usable again.

use fieldlink_drivers::modbus::{PlanItem, Table, Value};
use tracing::{info, warn};

use crate::model::ModbusPoint;

/// Largest |sf| used: 10^10 is beyond any real quantity's scaling.
const MAX_SF: i16 = 10;

/// SunSpec's "not implemented" value of an `i16` (sunssf).
const NOT_IMPLEMENTED: u16 = 0x8000;

/// The distinct factor registers of `points` (a device's read points, in plan order) as
/// plan items, and for each point the index of its register among them.
pub fn scale_registers(points: &[ModbusPoint]) -> (Vec<PlanItem>, Vec<Option<usize>>) {
    let mut registers: Vec<(Table, u16)> = Vec::new();
    let of_point = points
        .iter()
        .map(|m| {
            let a = m.scale_register?;
            let key = (m.table, a);
            Some(registers.iter().position(|r| *r == key).unwrap_or_else(|| {
                registers.push(key);
                registers.len() - 1
            }))
        })
        .collect();
    let items = registers
        .into_iter()
        .map(|(table, address)| PlanItem {
            table,
            address,
            count: 1,
        })
        .collect();
    (items, of_point)
}

/// A factor as read: 10^sf, or why it cannot be used.
pub(crate) fn factor(raw: u16) -> Result<f64, String> {
    let sf = raw as i16;
    if raw == NOT_IMPLEMENTED {
        Err("0x8000 (not implemented)".into())
    } else if !(-MAX_SF..=MAX_SF).contains(&sf) {
        Err(format!("{sf}, outside -{MAX_SF}..{MAX_SF}"))
    } else if sf < 0 {
        // 1/100 is the double nearest 0.01; 10^-2 computed as a power is not always.
        Ok(1.0 / 10f64.powi(-i32::from(sf)))
    } else {
        Ok(10f64.powi(i32::from(sf)))
    }
}

/// What a device's poll knows of its factors.
#[derive(Debug, Default)]
pub(crate) struct Scales {
    /// The planner item of the first factor register (the points' items come first).
    first: usize,
    /// Each factor register: table and address.
    registers: Vec<(Table, u16)>,
    /// For each point item, its factor register.
    of_point: Vec<Option<usize>>,
    /// The factor read in the poll under way, per register (raw).
    read: Vec<Option<u16>>,
    /// Warned that a register's factor is unusable (until it is usable again).
    warned: Vec<bool>,
    /// Values read before their factor in the poll under way: point item and value.
    pending: Vec<(usize, Value)>,
}

impl Scales {
    /// The factors of a device whose read points are `points` (planner items
    /// `0..points.len()`); returns them and their plan items (to append).
    pub(crate) fn new(points: &[ModbusPoint]) -> (Scales, Vec<PlanItem>) {
        let (items, of_point) = scale_registers(points);
        let s = Scales {
            first: points.len(),
            registers: items.iter().map(|i| (i.table, i.address)).collect(),
            of_point,
            read: vec![None; items.len()],
            warned: vec![false; items.len()],
            pending: Vec::new(),
        };
        (s, items)
    }

    /// A poll begins: nothing read yet.
    pub(crate) fn begin(&mut self) {
        self.read.iter_mut().for_each(|r| *r = None);
        self.pending.clear();
    }

    /// Planner item `m` is a factor register.
    pub(crate) fn is_factor(&self, m: usize) -> bool {
        m >= self.first
    }

    /// The factor register of point item `m`, if it has one.
    pub(crate) fn of(&self, m: usize) -> Option<usize> {
        self.of_point.get(m).copied().flatten()
    }

    /// Due marks of the factor items, after the points' `due`: a factor is due when a
    /// point scaled by it is.
    pub(crate) fn due(&self, due: &[bool]) -> impl Iterator<Item = bool> + '_ {
        let due: Vec<bool> = due.to_vec();
        (0..self.registers.len()).map(move |s| {
            self.of_point
                .iter()
                .zip(&due)
                .any(|(o, d)| *d && *o == Some(s))
        })
    }

    /// The table and address of factor item `m`.
    pub(crate) fn register(&self, m: usize) -> (Table, u16) {
        self.registers[m - self.first]
    }

    /// What factor item `m` is, for logs: `scale factor at holding 40075`.
    pub(crate) fn name(&self, m: usize) -> String {
        let (t, a) = self.register(m);
        format!("scale factor at {t} {a}")
    }

    /// Factor item `m` was read as `raw`: the values that waited for it, with their
    /// factor.
    pub(crate) fn read(&mut self, device: &str, m: usize, raw: u16) -> Vec<(usize, Value, f64)> {
        let s = m - self.first;
        self.read[s] = Some(raw);
        let waiting: Vec<(usize, Value)> = {
            let (mine, rest) = std::mem::take(&mut self.pending)
                .into_iter()
                .partition(|(p, _)| self.of(*p) == Some(s));
            self.pending = rest;
            mine
        };
        match self.usable(device, s) {
            Some(f) => waiting.into_iter().map(|(p, v)| (p, v, f)).collect(),
            None => Vec::new(),
        }
    }

    /// Point item `m` read as `value`: its factor when it can be published now, `None`
    /// when it cannot (unusable factor) or waits for its factor (kept).
    pub(crate) fn value(&mut self, device: &str, m: usize, value: Value) -> Option<(Value, f64)> {
        let Some(s) = self.of(m) else {
            return Some((value, 1.0));
        };
        if self.read[s].is_none() {
            self.pending.push((m, value));
            return None;
        }
        self.usable(device, s).map(|f| (value, f))
    }

    /// The factor of register `s` read in this poll, warned once when unusable.
    fn usable(&mut self, device: &str, s: usize) -> Option<f64> {
        let raw = self.read[s]?;
        let (table, address) = self.registers[s];
        match factor(raw) {
            Ok(f) => {
                if std::mem::replace(&mut self.warned[s], false) {
                    info!(device = %device, %table, address, "Scale factor usable again.");
                }
                Some(f)
            }
            Err(why) => {
                if !std::mem::replace(&mut self.warned[s], true) {
                    warn!(device = %device, %table, address, factor = %why, "Scale factor unusable; the values it scales are not published.");
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldlink_drivers::modbus::WordOrder;

    fn point(address: u16, sf: Option<u16>) -> ModbusPoint {
        ModbusPoint {
            table: Table::Holding,
            address,
            order: WordOrder::Abcd,
            bit: None,
            write_address: None,
            scale_register: sf,
        }
    }

    #[test]
    fn factors_in_range_only() {
        assert_eq!(factor(0), Ok(1.0));
        assert_eq!(factor(2), Ok(100.0));
        assert_eq!(factor((-2i16) as u16), Ok(0.01));
        assert_eq!(factor((-10i16) as u16), Ok(1e-10));
        assert!(factor(11).is_err());
        assert!(factor((-11i16) as u16).is_err());
        assert!(factor(0x8000).unwrap_err().contains("not implemented"));
    }

    #[test]
    fn one_item_per_register_shared_by_its_points() {
        let points = [
            point(0, Some(4)),
            point(1, Some(4)),
            point(2, None),
            point(3, Some(9)),
        ];
        let (items, of) = scale_registers(&points);
        assert_eq!(items.len(), 2);
        assert_eq!((items[0].address, items[0].count), (4, 1));
        assert_eq!(items[1].address, 9);
        assert_eq!(of, [Some(0), Some(0), None, Some(1)]);
    }

    #[test]
    fn a_value_waits_for_its_factor_within_the_poll_only() {
        let points = [point(0, Some(10)), point(1, None)];
        let (mut s, items) = Scales::new(&points);
        assert_eq!(items.len(), 1);
        assert!(s.is_factor(2) && !s.is_factor(1));
        s.begin();
        // Unscaled points go out at once; a scaled one waits for its factor.
        assert_eq!(s.value("d", 1, Value::Int(5)), Some((Value::Int(5), 1.0)));
        assert_eq!(s.value("d", 0, Value::Int(1234)), None);
        assert_eq!(
            s.read("d", 2, (-1i16) as u16),
            vec![(0, Value::Int(1234), 0.1)]
        );
        // Later in the same poll: the factor is known.
        assert_eq!(s.value("d", 0, Value::Int(7)), Some((Value::Int(7), 0.1)));
        // A new poll forgets it: the value waits again, and is dropped with the poll.
        s.begin();
        assert_eq!(s.value("d", 0, Value::Int(8)), None);
        s.begin();
        assert_eq!(s.read("d", 2, 1), vec![]);
        // An unusable factor publishes nothing, also what waited for it.
        s.begin();
        assert_eq!(s.value("d", 0, Value::Int(9)), None);
        assert_eq!(s.read("d", 2, 0x8000), vec![]);
        assert_eq!(s.value("d", 0, Value::Int(9)), None);
    }

    #[test]
    fn factors_are_due_with_their_points() {
        let points = [point(0, Some(10)), point(1, None), point(2, Some(11))];
        let (s, _) = Scales::new(&points);
        let due: Vec<bool> = s.due(&[false, true, true]).collect();
        assert_eq!(due, [false, true]);
    }
}
