//! The read planner: turns a device's points into the fewest Modbus read requests.
//!
//! Points of the same table are merged when they are contiguous or separated by at most
//! `max_gap` registers (bits for coils/discretes), never beyond the PDU limit (125
//! registers, 2000 bits). When a merged read is answered with exception 02 (illegal data
//! address), [`Planner::learn_illegal_address`] records why: the bridged gap registers
//! become holes that are not bridged, or, for a gap-less read, its points are read one by
//! one to find the culprit. A point that fails alone is *unreadable*: it leaves the plan
//! (its neighbours merge again without it) and is probed alone from time to time.
//!
//! Nothing learned is permanent: a device that answers 02 for a moment (booting, busy)
//! must not be read point by point forever. Every hole and every unreadable point is
//! checked again after a backoff (10 s, doubling up to an hour, [`RECHECK_FIRST`] and
//! [`RECHECK_MAX`]); a hole whose merged read then succeeds is bridged again, and an
//! unreadable point that answers goes back into the merged reads. Time is passed in
//! ([`Planner::refresh`]), so tests run on a paused clock.
//!
//! Points at their own cadence: [`Planner::plan_for`] plans only the items due in a cycle
//! (`subset.rs`); an item that is not due costs no read of its own but rides along in a
//! read that covers it whole.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use tokio::time::Instant;

use super::Table;

mod subset;

/// One point as the planner sees it: which registers (or bits) it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanItem {
    /// The table.
    pub table: Table,
    /// First register/bit address.
    pub address: u16,
    /// Number of registers (or bits) the point occupies, at least 1.
    pub count: u16,
}

impl PlanItem {
    fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.count)
    }
}

/// One read request and the points (indices into the planner's items) it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    /// The table.
    pub table: Table,
    /// First address.
    pub start: u16,
    /// Quantity of registers/bits.
    pub count: u16,
    /// Indices of the items served by this request.
    pub members: Vec<usize>,
}

impl ReadRequest {
    /// Addresses inside the request that belong to no member (bridged gaps).
    pub fn gaps(&self, items: &[PlanItem]) -> Vec<u16> {
        let start = u32::from(self.start);
        let mut covered = vec![false; usize::from(self.count)];
        for &m in &self.members {
            let it = items[m];
            for a in u32::from(it.address)..it.end() {
                if let Some(c) = a
                    .checked_sub(start)
                    .and_then(|i| covered.get_mut(i as usize))
                {
                    *c = true;
                }
            }
        }
        covered
            .iter()
            .enumerate()
            .filter(|(_, c)| !**c)
            .filter_map(|(i, _)| u16::try_from(start + i as u32).ok())
            .collect()
    }
}

/// A complete plan for one poll cycle.
pub type Plan = Vec<ReadRequest>;

/// First wait before something learned from an exception 02 is checked again.
pub const RECHECK_FIRST: Duration = Duration::from_secs(10);
/// Longest wait between two checks.
pub const RECHECK_MAX: Duration = Duration::from_secs(3600);

/// Something learned from an exception 02, valid until `until`.
#[derive(Clone, Copy, Debug)]
struct Learned {
    /// Until then the fact is used; from then on it is checked again.
    until: Instant,
    /// The wait after the next confirmation (doubles each time, up to [`RECHECK_MAX`]).
    next: Duration,
    /// The fact is in force (false: it expired and is being checked again).
    active: bool,
}

impl Learned {
    fn new(now: Instant) -> Self {
        Learned {
            until: now + RECHECK_FIRST,
            next: (RECHECK_FIRST * 2).min(RECHECK_MAX),
            active: true,
        }
    }

    /// Seen again: in force once more, for longer.
    fn confirm(&mut self, now: Instant) {
        self.until = now + self.next;
        self.next = (self.next * 2).min(RECHECK_MAX);
        self.active = true;
    }
}

/// How large the reads of one device may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLimits {
    /// Largest gap (registers or bits) bridged to merge two reads.
    pub max_gap: u16,
    /// Most registers in one read (1–125; some devices refuse long reads).
    pub registers: u16,
    /// Most bits in one read (1–2000).
    pub bits: u16,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_gap: 8,
            registers: Table::Holding.max_read(),
            bits: Table::Coil.max_read(),
        }
    }
}

impl ReadLimits {
    /// The most one read of `table` may ask for.
    pub fn max_read(&self, table: Table) -> u16 {
        let limit = if table.is_bits() {
            self.bits
        } else {
            self.registers
        };
        limit.clamp(1, table.max_read())
    }
}

/// Plans reads for one device and learns from illegal-address exceptions.
#[derive(Clone, Debug)]
pub struct Planner {
    items: Vec<PlanItem>,
    max_gap: u16,
    limits: ReadLimits,
    /// Gap addresses not to bridge.
    holes: BTreeMap<(Table, u16), Learned>,
    /// Items being read alone to find which of a failed gap-less read is at fault.
    suspects: HashSet<usize>,
    /// Items that failed alone: out of the plan until their check is due.
    unreadable: BTreeMap<usize, Learned>,
    plan: Plan,
    /// Plans of the subsets of items due together (points at their own cadence), by
    /// their due marks; emptied whenever the plan changes.
    subsets: Vec<(Vec<bool>, Plan)>,
}

impl Planner {
    /// A planner for these items, bridging gaps of up to `max_gap` registers.
    pub fn new(items: Vec<PlanItem>, max_gap: u16) -> Self {
        Planner::with_limits(
            items,
            ReadLimits {
                max_gap,
                ..ReadLimits::default()
            },
        )
    }

    /// A planner for these items within `limits` (an item larger than the read limit is
    /// still read, alone: a value cannot be split).
    pub fn with_limits(items: Vec<PlanItem>, limits: ReadLimits) -> Self {
        let mut p = Planner {
            items,
            max_gap: limits.max_gap,
            limits,
            holes: BTreeMap::new(),
            suspects: HashSet::new(),
            unreadable: BTreeMap::new(),
            plan: Vec::new(),
            subsets: Vec::new(),
        };
        p.replan();
        p
    }

    /// The current plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Addresses currently treated as holes.
    pub fn holes(&self) -> impl Iterator<Item = &(Table, u16)> {
        self.holes.iter().filter(|(_, l)| l.active).map(|(k, _)| k)
    }

    /// Items currently out of the plan because they failed alone (indices).
    pub fn unreadable(&self) -> impl Iterator<Item = usize> + '_ {
        self.unreadable
            .iter()
            .filter(|(_, l)| l.active)
            .map(|(i, _)| *i)
    }

    /// Call at the start of every poll cycle: what learned facts are due is checked again
    /// in this cycle's plan (holes bridged, unreadable items read alone).
    pub fn refresh(&mut self, now: Instant) {
        let mut changed = false;
        for l in self.holes.values_mut().chain(self.unreadable.values_mut()) {
            if l.active && now >= l.until {
                l.active = false;
                changed = true;
            }
        }
        if changed {
            self.replan();
        }
    }

    /// A request was answered: what it covered is readable. Holes it bridged and
    /// unreadable items it served are forgotten (a later failure starts the backoff
    /// anew); items read alone as suspects merge again. Returns the indices of items that
    /// were unreadable and now answered.
    pub fn read_ok(&mut self, req: &ReadRequest) -> Vec<usize> {
        if self.holes.is_empty() && self.suspects.is_empty() && self.unreadable.is_empty() {
            return Vec::new(); // nothing learned: the common case, on every read
        }
        let start = u32::from(req.start);
        let end = start + u32::from(req.count);
        let before = self.holes.len() + self.suspects.len() + self.unreadable.len();
        self.holes.retain(|(t, a), l| {
            l.active || *t != req.table || !(start..end).contains(&u32::from(*a))
        });
        let mut recovered = Vec::new();
        for m in &req.members {
            self.suspects.remove(m);
            if self.unreadable.remove(m).is_some() {
                recovered.push(*m);
            }
        }
        if self.holes.len() + self.suspects.len() + self.unreadable.len() != before {
            self.replan();
        }
        recovered
    }

    fn replan(&mut self) {
        self.plan = self.build(None);
        self.subsets.clear();
    }

    /// The reads of the items `due` marks (every item when `None`). A read starts and
    /// ends at a due item; an item that is not due may bridge the way between two due
    /// ones (it is no gap: its registers exist), and rides along in every read that
    /// covers it whole ([`Planner::plan_for`]).
    fn build(&self, due: Option<&[bool]>) -> Plan {
        let is_due = |i: usize| due.is_none_or(|d| d.get(i).copied().unwrap_or(false));
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        order.sort_by_key(|&i| {
            (
                self.items[i].table,
                self.items[i].address,
                self.items[i].count,
            )
        });
        let mut plan: Plan = Vec::new();
        // The read being built, where its items end, and where its due items end.
        let mut cur: Option<(ReadRequest, u32, u32)> = None;
        let close = |(mut req, _, due_end): (ReadRequest, u32, u32)| {
            req.count = (due_end - u32::from(req.start)) as u16;
            req
        };
        for &i in &order {
            let it = self.items[i];
            if self.unreadable.get(&i).is_some_and(|l| l.active) {
                continue;
            }
            if self.suspects.contains(&i) || self.unreadable.contains_key(&i) {
                if is_due(i) {
                    plan.push(ReadRequest {
                        table: it.table,
                        start: it.address,
                        count: it.count,
                        members: vec![i],
                    });
                }
                continue;
            }
            if let Some((req, end, due_end)) = cur.as_mut() {
                let max = u32::from(self.limits.max_read(it.table));
                let new_end = (*end).max(it.end());
                let bridge_ok = u32::from(it.address) <= *end + u32::from(self.max_gap)
                    && !(*end..u32::from(it.address)).any(|a| {
                        u16::try_from(a)
                            .is_ok_and(|a| self.holes.get(&(it.table, a)).is_some_and(|l| l.active))
                    });
                if req.table == it.table && bridge_ok && new_end - u32::from(req.start) <= max {
                    *end = new_end;
                    if is_due(i) {
                        *due_end = (*due_end).max(it.end());
                        req.members.push(i);
                    }
                    continue;
                }
            }
            // An item that is not due never starts a read.
            if !is_due(i) {
                continue;
            }
            if let Some(c) = cur.take() {
                plan.push(close(c));
            }
            cur = Some((
                ReadRequest {
                    table: it.table,
                    start: it.address,
                    count: it.count,
                    members: vec![i],
                },
                it.end(),
                it.end(),
            ));
        }
        if let Some(c) = cur {
            plan.push(close(c));
        }
        plan.sort_by_key(|r| (r.table, r.start));
        if due.is_some() {
            self.ride_along(&mut plan, &order, is_due);
        }
        plan
    }

    /// Learn from an exception 02 on `req` at `now`. Returns the requests that now
    /// replace it in this cycle (empty when the request was a single point: that point is
    /// unreadable until its next check).
    pub fn learn_illegal_address(&mut self, req: &ReadRequest, now: Instant) -> Vec<ReadRequest> {
        self.learn_illegal_address_for(req, now, None)
    }

    /// [`Planner::learn_illegal_address`] in a cycle that reads only the items `due`
    /// marks ([`Planner::plan_for`]; `None`: every item): the replacements read only
    /// those.
    pub fn learn_illegal_address_for(
        &mut self,
        req: &ReadRequest,
        now: Instant,
        due: Option<&[bool]>,
    ) -> Vec<ReadRequest> {
        let gaps = req.gaps(&self.items);
        if !gaps.is_empty() {
            for a in gaps {
                self.holes
                    .entry((req.table, a))
                    .and_modify(|l| l.confirm(now))
                    .or_insert_with(|| Learned::new(now));
            }
        } else if req.members.len() > 1 {
            self.suspects.extend(req.members.iter().copied());
        } else {
            for &m in &req.members {
                self.suspects.remove(&m);
                self.unreadable
                    .entry(m)
                    .and_modify(|l| l.confirm(now))
                    .or_insert_with(|| Learned::new(now));
            }
            self.replan();
            return Vec::new();
        }
        self.replan();
        let is_due = |m: &usize| due.is_none_or(|d| d.get(*m).copied().unwrap_or(false));
        let plan = match due {
            Some(d) => self.plan_for(d),
            None => &self.plan,
        };
        plan.iter()
            .filter(|r| {
                r.members
                    .iter()
                    .any(|m| req.members.contains(m) && is_due(m))
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(address: u16, count: u16) -> PlanItem {
        PlanItem {
            table: Table::Holding,
            address,
            count,
        }
    }

    #[test]
    fn merges_contiguous_and_small_gaps_only() {
        let p = Planner::new(vec![reg(0, 2), reg(2, 1), reg(10, 2), reg(40, 1)], 8);
        let plan = p.plan();
        assert_eq!(plan.len(), 2);
        assert_eq!((plan[0].start, plan[0].count), (0, 12));
        assert_eq!((plan[1].start, plan[1].count), (40, 1));
    }

    #[test]
    fn never_exceeds_pdu_limit() {
        let items: Vec<_> = (0..300).map(|i| reg(i * 2, 2)).collect();
        let p = Planner::new(items, 8);
        assert!(p.plan().iter().all(|r| r.count <= 125));
        assert_eq!(p.plan().len(), 5);
        let bits: Vec<_> = (0..2500)
            .map(|a| PlanItem {
                table: Table::Coil,
                address: a,
                count: 1,
            })
            .collect();
        let p = Planner::new(bits, 8);
        assert_eq!(p.plan().len(), 2);
        assert_eq!(p.plan()[0].count, 2000);
    }

    #[test]
    fn device_read_limits_are_kept() {
        // 30 contiguous registers, a device that reads at most 10 at a time.
        let items: Vec<_> = (0..30).map(|i| reg(i, 1)).collect();
        let limits = ReadLimits {
            max_gap: 8,
            registers: 10,
            bits: 16,
        };
        let p = Planner::with_limits(items, limits);
        let spans: Vec<_> = p.plan().iter().map(|r| (r.start, r.count)).collect();
        assert_eq!(spans, vec![(0, 10), (10, 10), (20, 10)]);
        // A value larger than the limit is read alone, whole.
        let p = Planner::with_limits(
            vec![reg(0, 4), reg(4, 1)],
            ReadLimits {
                registers: 2,
                ..limits
            },
        );
        let spans: Vec<_> = p.plan().iter().map(|r| (r.start, r.count)).collect();
        assert_eq!(spans, vec![(0, 4), (4, 1)]);
        // Bits: 40 coils at 16 a read.
        let coils: Vec<_> = (0..40)
            .map(|a| PlanItem {
                table: Table::Coil,
                address: a,
                count: 1,
            })
            .collect();
        let p = Planner::with_limits(coils, limits);
        let spans: Vec<_> = p.plan().iter().map(|r| (r.start, r.count)).collect();
        assert_eq!(spans, vec![(0, 16), (16, 16), (32, 8)]);
        // Out-of-range limits fall back to the protocol's.
        assert_eq!(
            ReadLimits {
                registers: 500,
                ..limits
            }
            .max_read(Table::Input),
            125
        );
    }

    #[test]
    fn tables_do_not_mix_and_overlaps_share_a_read() {
        let items = vec![
            reg(0, 2),
            reg(0, 1),
            PlanItem {
                table: Table::Input,
                address: 1,
                count: 1,
            },
        ];
        let p = Planner::new(items, 8);
        assert_eq!(p.plan().len(), 2);
        assert_eq!(p.plan()[0].members.len(), 2);
    }

    fn now() -> Instant {
        Instant::now()
    }

    #[test]
    fn exception_02_learns_holes_then_isolates() {
        let t = now();
        let mut p = Planner::new(vec![reg(0, 1), reg(4, 1)], 8);
        let req = p.plan()[0].clone();
        assert_eq!(req.count, 5);
        let replaced = p.learn_illegal_address(&req, t);
        assert_eq!(replaced.len(), 2);
        assert_eq!(p.plan().len(), 2);
        assert_eq!(p.holes().count(), 3);
        // Contiguous points that fail together are read alone to find the culprit.
        let mut p = Planner::new(vec![reg(0, 1), reg(1, 1)], 8);
        let req = p.plan()[0].clone();
        assert_eq!(p.learn_illegal_address(&req, t).len(), 2);
        let single = p.plan()[0].clone();
        assert!(p.learn_illegal_address(&single, t).is_empty());
        assert_eq!(p.unreadable().collect::<Vec<_>>(), vec![0]);
    }

    /// A device that answers 02 to everything for a moment: the layout it causes is
    /// undone once the checks are due and the device answers again.
    #[test]
    fn a_transient_burst_of_02_does_not_stay() {
        let t0 = now();
        let items: Vec<_> = (20..32)
            .map(|a| reg(a, 1))
            .chain([PlanItem {
                table: Table::Input,
                address: 0,
                count: 4,
            }])
            .collect();
        let mut p = Planner::new(items, 8);
        let layout = p.plan().clone();
        assert_eq!(layout.len(), 2);
        // Every read fails: split, then every point fails alone.
        let mut queue: Vec<ReadRequest> = layout.clone();
        while let Some(r) = queue.pop() {
            queue.extend(p.learn_illegal_address(&r, t0));
        }
        assert_eq!(p.unreadable().count(), 13);
        assert!(p.plan().is_empty(), "nothing readable is planned");
        // Before the check nothing changes; at the check every point is read alone.
        p.refresh(t0 + RECHECK_FIRST / 2);
        assert!(p.plan().is_empty());
        p.refresh(t0 + RECHECK_FIRST);
        assert_eq!(p.plan().len(), 13);
        // The device answers now: the reads merge again into the original layout.
        for r in p.plan().clone() {
            p.read_ok(&r);
        }
        assert_eq!(p.plan(), &layout);
        assert_eq!(p.unreadable().count(), 0);
    }

    /// An address that really does not exist inside a block: only that point leaves the
    /// merged read; it is probed alone with a doubling backoff (up to an hour).
    #[test]
    fn a_missing_address_is_isolated_and_probed_with_backoff() {
        let t0 = now();
        // 28..31 as u16, 32 as a u32 (32-33) that the device does not have.
        let mut p = Planner::new(
            vec![reg(28, 1), reg(29, 1), reg(30, 1), reg(31, 1), reg(32, 2)],
            8,
        );
        let merged = p.plan()[0].clone();
        assert_eq!((merged.start, merged.count), (28, 6));
        let singles = p.learn_illegal_address(&merged, t0);
        assert_eq!(singles.len(), 5);
        for r in singles {
            if r.start == 32 {
                assert!(p.learn_illegal_address(&r, t0).is_empty());
            } else {
                p.read_ok(&r);
            }
        }
        // Steady state: one read of 28-31, the bad point out of the plan.
        let plan: Vec<_> = p.plan().iter().map(|r| (r.start, r.count)).collect();
        assert_eq!(plan, vec![(28, 4)]);
        // Probed at 10 s, still missing: next probe 20 s later, then 40 s, ... ≤ 1 h.
        let mut t = t0;
        let mut waits = Vec::new();
        let mut wait = RECHECK_FIRST;
        for _ in 0..12 {
            t += wait;
            p.refresh(t);
            let probe = p
                .plan()
                .iter()
                .find(|r| r.start == 32)
                .cloned()
                .expect("probe due");
            assert!(p.learn_illegal_address(&probe, t).is_empty());
            assert!(p.plan().iter().all(|r| r.start != 32));
            waits.push(wait);
            wait = (wait * 2).min(RECHECK_MAX);
        }
        assert_eq!(waits[1], RECHECK_FIRST * 2);
        assert_eq!(*waits.last().expect("waits"), RECHECK_MAX);
        // Just before the next check the point stays out.
        p.refresh(t + RECHECK_MAX - Duration::from_secs(1));
        assert!(p.plan().iter().all(|r| r.start != 32));
    }

    /// A bridged gap that is a hole: the hole is tried again later, and bridged again if
    /// the device then answers the merged read.
    #[test]
    fn holes_are_bridged_again_after_their_check() {
        let t0 = now();
        let mut p = Planner::new(vec![reg(0, 1), reg(4, 1)], 8);
        let merged = p.plan()[0].clone();
        p.learn_illegal_address(&merged, t0);
        assert_eq!(p.plan().len(), 2);
        p.refresh(t0 + RECHECK_FIRST);
        assert_eq!(p.plan().len(), 1, "the hole is tried again");
        let again = p.plan()[0].clone();
        p.read_ok(&again);
        assert_eq!(p.holes().count(), 0);
        assert_eq!(p.plan().len(), 1);
    }
}
