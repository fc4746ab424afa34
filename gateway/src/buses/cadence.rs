//! Points at their own cadence: a device's points grouped by how often they are read
//! (their own `poll_interval`, else the device's), which groups a poll reads, when the
//! device is polled next, and the requests per minute `fieldlink check` prints.
//!
//! Every group keeps its own due time. A device is polled when its earliest group is due
//! and that poll reads every group due by then (a device at 2 s with one point at 3 s
//! reads the others at 0, 2, 4, 6 s and that point at 0, 3, 6 s). The groups of a failed
//! poll are read again with the device's next poll, not a cadence later (an energy total
//! read every hour is not left unread for an hour by one lost reply, and a read that keeps
//! failing fails every poll, as it would on a device with one cadence). The verdict, the
//! fair share and the offline backoff in `schedule` and `actor` are the device's: they
//! count every failed poll, whichever groups it read, and take the shortest cadence as the
//! device's interval.

use std::time::Duration;

use fieldlink_drivers::modbus::{PlanItem, Planner};
use tokio::time::Instant as TokioInstant;

use crate::model::Device;

/// A device's points grouped by cadence, and when each group is due.
#[derive(Debug)]
pub(crate) struct Groups {
    /// The cadences, shortest first.
    every: Vec<Duration>,
    /// When each group is due next.
    next: Vec<TokioInstant>,
    /// The group of each point of the device (empty when there is one group).
    of_point: Vec<u32>,
    /// The groups the poll under way reads.
    due: Vec<bool>,
}

/// Which points of a device a poll reads.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Due<'a> {
    /// Every point (a device with one cadence, or every group due at once).
    All,
    /// The points of the groups due now.
    Some(&'a Groups),
}

impl Due<'_> {
    /// Every point is due.
    pub(crate) fn all(self) -> bool {
        matches!(self, Due::All)
    }

    /// Point `p` of the device is due.
    pub(crate) fn point(self, p: usize) -> bool {
        match self {
            Due::All => true,
            Due::Some(g) => g.of_point.get(p).is_none_or(|&k| g.due[k as usize]),
        }
    }
}

/// The distinct cadences of `device`'s points, shortest first (its own `poll_interval`
/// when it has no points).
fn cadences(device: &Device) -> Vec<Duration> {
    let mut every: Vec<Duration> = device
        .points
        .iter()
        .filter(|p| !p.write_only)
        .map(|p| p.cadence(device))
        .collect();
    if every.is_empty() {
        every.push(device.poll_interval);
    }
    every.sort_unstable();
    every.dedup();
    every
}

impl Groups {
    /// The groups of `device`, all first due at `first`.
    pub(crate) fn new(device: &Device, first: TokioInstant) -> Groups {
        let every = cadences(device);
        let of_point = if every.len() > 1 {
            device
                .points
                .iter()
                .map(|p| {
                    let c = p.cadence(device);
                    every.iter().position(|e| *e == c).unwrap_or(0) as u32
                })
                .collect()
        } else {
            Vec::new()
        };
        Groups {
            next: vec![first; every.len()],
            due: vec![false; every.len()],
            every,
            of_point,
        }
    }

    /// Every group first due at `first`.
    pub(crate) fn start_at(&mut self, first: TokioInstant) {
        self.next.fill(first);
    }

    /// The device's shortest cadence: the interval its verdict and its offline backoff
    /// count in.
    pub(crate) fn tick(&self) -> Duration {
        self.every[0]
    }

    /// A poll begins at `now`: the groups due by then are read (at least the earliest).
    pub(crate) fn begin(&mut self, now: TokioInstant) -> Due<'_> {
        let earliest = self.next.iter().min().copied().unwrap_or(now);
        for (due, next) in self.due.iter_mut().zip(&self.next) {
            *due = *next <= now.max(earliest);
        }
        if self.due.iter().all(|d| *d) {
            Due::All
        } else {
            Due::Some(self)
        }
    }

    /// The poll that was due at `scheduled` ended at `now` (`ok`: not failed): the groups
    /// it read are next due one cadence later (from when the poll was due, never in the
    /// past); after a failed poll they are read again with the device's next poll.
    /// Returns when the earliest group is due.
    pub(crate) fn end(
        &mut self,
        scheduled: TokioInstant,
        ok: bool,
        now: TokioInstant,
    ) -> TokioInstant {
        for ((next, every), due) in self.next.iter_mut().zip(&self.every).zip(&self.due) {
            if *due {
                *next = ((*next).max(scheduled) + *every).max(now);
            }
        }
        let earliest = self.next.iter().min().copied().unwrap_or(now);
        if !ok {
            for (next, due) in self.next.iter_mut().zip(&self.due) {
                if *due {
                    *next = earliest;
                }
            }
        }
        earliest
    }
}

/// What `fieldlink check` says of one Modbus device: for each cadence (shortest first),
/// the requests per minute its points cost, a request shared by several cadences counted
/// for the shortest of them; their sum is the device's requests per minute. Computed from
/// the read planner's plan for every set of cadences that comes due together, when the
/// groups all start at once and nothing fails.
pub fn requests_per_minute(device: &Device) -> Vec<(Duration, f64)> {
    let every = cadences(device);
    let (mut items, mut groups): (Vec<PlanItem>, Vec<usize>) = device
        .points
        .iter()
        .filter(|p| !p.write_only)
        .filter_map(|p| {
            let m = p.modbus()?;
            let g = every.iter().position(|e| *e == p.cadence(device))?;
            let item = PlanItem {
                table: m.table,
                address: m.address,
                count: m.count(p.ty),
            };
            Some((item, g))
        })
        .unzip();
    // Scale factor registers (#25): read with the fastest of the points they scale.
    let read: Vec<_> = device
        .points
        .iter()
        .filter(|p| !p.write_only)
        .filter_map(|p| p.modbus().copied())
        .collect();
    let (factors, of_point) = super::scale_registers(&read);
    for (s, f) in factors.into_iter().enumerate() {
        let g = of_point
            .iter()
            .zip(&groups)
            .filter(|(o, _)| **o == Some(s))
            .map(|(_, g)| *g)
            .min()
            .unwrap_or(0);
        items.push(f);
        groups.push(g);
    }
    let limits = device.modbus().map(|m| m.read_limits()).unwrap_or_default();
    let mut planner = Planner::with_limits(items, limits);
    let mut per_minute = vec![0f64; every.len()];
    // How often each set of groups (a bit mask) is due together, exactly that set, per
    // minute.
    for (mask, rate) in due_sets(&every) {
        let due: Vec<bool> = groups.iter().map(|g| mask & (1 << g) != 0).collect();
        for r in planner.plan_for(&due) {
            if let Some(g) = r
                .members
                .iter()
                .filter(|m| due[**m])
                .map(|m| groups[*m])
                .min()
            {
                per_minute[g] += rate;
            }
        }
    }
    every.into_iter().zip(per_minute).collect()
}

/// Most cadences on one device counted exactly; beyond, each counts as if read alone.
const EXACT_GROUPS: usize = 8;

/// The sets of groups (bit masks) due together, with how many times a minute exactly that
/// set is due: group `g` is due at every multiple of `every[g]` (all start together), so
/// all of a set `T` at the multiples of their least common multiple, and exactly `S`
/// by inclusion and exclusion over the sets that contain it.
fn due_sets(every: &[Duration]) -> Vec<(u32, f64)> {
    let per_minute = |d: u128| 60e6 / d as f64;
    let micros: Vec<u128> = every.iter().map(|e| e.as_micros().max(1)).collect();
    if micros.len() > EXACT_GROUPS {
        return (0..micros.len())
            .map(|g| (1 << g, per_minute(micros[g])))
            .collect();
    }
    let n = 1usize << micros.len();
    let mut lcm = vec![1u128; n];
    let mut rate = vec![0f64; n];
    for mask in 1..n {
        let low = mask.trailing_zeros() as usize;
        lcm[mask] = lcm_of(lcm[mask & (mask - 1)], micros[low]);
        rate[mask] = if lcm[mask] == u128::MAX {
            0.0
        } else {
            per_minute(lcm[mask])
        };
    }
    // Exactly S = at least S, minus what at least a larger set covers.
    for g in 0..micros.len() {
        for mask in 1..n {
            if mask & (1 << g) == 0 {
                rate[mask] -= rate[mask | 1 << g];
            }
        }
    }
    (1..n)
        .filter(|&m| rate[m] > 1e-9)
        .map(|m| (m as u32, rate[m]))
        .collect()
}

/// Least common multiple, `u128::MAX` when it does not fit.
fn lcm_of(a: u128, b: u128) -> u128 {
    if a == u128::MAX {
        return a;
    }
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    (a / x).saturating_mul(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Point, Table};

    fn device(every: Duration, points: &[(u16, Option<u64>)]) -> Device {
        Device {
            id: "meter".into(),
            poll_interval: every,
            offline_after: 3,
            max_backoff: Duration::from_secs(60),
            kind: crate::model::DeviceKind::Modbus(crate::model::ModbusDevice {
                unit: 1,
                max_gap: 8,
                max_read_registers: 125,
                max_read_bits: 2000,
                write_multiple: false,
            }),
            ha: Default::default(),
            json_topic: None,
            points: points
                .iter()
                .map(|&(address, secs)| {
                    let mut p: Point = crate::model::test_point(crate::model::ValueType::U16);
                    if let crate::model::Source::Modbus(m) = &mut p.source {
                        m.address = address;
                        m.table = Table::Holding;
                    }
                    p.poll_interval = secs.map(Duration::from_secs);
                    p
                })
                .collect(),
        }
    }

    const S: Duration = Duration::from_secs(1);

    /// A device at 2 s with a point at 3 s: that point at 0, 3, 6, 9 s, the others at 0,
    /// 2, 4, 6, 8 s; the device is polled whenever one of them is due.
    #[test]
    fn each_group_at_its_own_cadence() {
        let d = device(2 * S, &[(0, None), (100, Some(3))]);
        let t0 = TokioInstant::now();
        let mut g = Groups::new(&d, t0);
        assert_eq!(g.tick(), 2 * S);
        let mut at = t0;
        let mut reads = (Vec::new(), Vec::new());
        while at < t0 + 10 * S {
            let due = g.begin(at);
            let (fast, slow) = (due.point(0), due.point(1));
            let secs = (at - t0).as_secs();
            if fast {
                reads.0.push(secs);
            }
            if slow {
                reads.1.push(secs);
            }
            at = g.end(at, true, at);
        }
        assert_eq!(reads.0, [0, 2, 4, 6, 8]);
        assert_eq!(reads.1, [0, 3, 6, 9]);
    }

    /// One cadence: every poll reads everything, one interval after the last was due.
    #[test]
    fn one_cadence_is_every_point_every_time() {
        let d = device(S, &[(0, None), (1, Some(1))]);
        let t0 = TokioInstant::now();
        let mut g = Groups::new(&d, t0);
        assert!(g.begin(t0).all());
        // A poll that ran late (fair share, backoff) counts from when it was due.
        assert_eq!(g.end(t0 + 5 * S, true, t0 + 5 * S), t0 + 6 * S);
        assert!(g.begin(t0 + 6 * S).all());
        assert_eq!(g.end(t0 + 6 * S, false, t0 + 6 * S), t0 + 7 * S);
    }

    /// A failed slow group is read again with the next poll, not an hour later.
    #[test]
    fn a_failed_group_is_read_again_with_the_next_poll() {
        let d = device(S, &[(0, None), (100, Some(3600))]);
        let t0 = TokioInstant::now();
        let mut g = Groups::new(&d, t0);
        assert!(g.begin(t0).all());
        assert_eq!(g.end(t0, false, t0), t0 + S);
        assert!(g.begin(t0 + S).all(), "the hour group is due again");
        assert_eq!(g.end(t0 + S, true, t0 + S), t0 + 2 * S);
        let due = g.begin(t0 + 2 * S);
        assert!(due.point(0) && !due.point(1));
        g.end(t0 + 2 * S, true, t0 + 2 * S);
        assert_eq!(g.next[1], t0 + 3601 * S);
        // 2 s and 3 s: the 3 s read alone fails at 3 s; it goes with the 2 s one at 4 s.
        let d = device(2 * S, &[(0, None), (100, Some(3))]);
        let mut g = Groups::new(&d, t0);
        g.begin(t0);
        g.end(t0, true, t0);
        g.begin(t0 + 2 * S);
        g.end(t0 + 2 * S, true, t0 + 2 * S);
        let due = g.begin(t0 + 3 * S);
        assert!(!due.point(0) && due.point(1));
        assert_eq!(g.end(t0 + 3 * S, false, t0 + 3 * S), t0 + 4 * S);
        assert!(g.begin(t0 + 4 * S).all());
    }

    #[test]
    fn requests_per_minute_by_cadence() {
        // Power every 1 s at 0 and 50 (two reads), energy every minute at 200, a serial
        // number every hour at 300.
        let d = device(
            S,
            &[(0, None), (50, None), (200, Some(60)), (300, Some(3600))],
        );
        let r = requests_per_minute(&d);
        let every: Vec<u64> = r.iter().map(|(e, _)| e.as_secs()).collect();
        assert_eq!(every, [1, 60, 3600]);
        let rates: Vec<f64> = r
            .iter()
            .map(|(_, n)| (n * 1000.0).round() / 1000.0)
            .collect();
        assert_eq!(rates, [120.0, 1.0, 0.017]);
        // Energy right after the power registers shares their read when both are due.
        let d = device(S, &[(0, None), (1, Some(60))]);
        let r = requests_per_minute(&d);
        assert_eq!(r[0].1.round(), 60.0);
        assert!(r[1].1.abs() < 1e-9, "{r:?}");
        // 2 s and 3 s far apart: 30 + 20 a minute.
        let d = device(2 * S, &[(0, None), (500, Some(3))]);
        let r = requests_per_minute(&d);
        assert_eq!((r[0].1.round(), r[1].1.round()), (30.0, 20.0));
        // Side by side they share the read every 6 s (counted for 2 s): 30 + 10.
        let d = device(2 * S, &[(0, None), (1, Some(3))]);
        let r = requests_per_minute(&d);
        assert_eq!((r[0].1.round(), r[1].1.round()), (30.0, 10.0));
    }
}
