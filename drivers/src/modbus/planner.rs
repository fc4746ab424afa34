//! The read planner: turns a device's points into the fewest Modbus read requests.
//!
//! Points of the same table are merged when they are contiguous or separated by at most
//! `max_gap` registers (bits for coils/discretes), never beyond the PDU limit (125
//! registers, 2000 bits). When a merged read is answered with exception 02 (illegal data
//! address), [`Planner::learn_illegal_address`] records why: the bridged gap registers
//! become known holes that are never bridged again, or, for a gap-less read, its points
//! are read one by one from then on. Later cycles therefore never repeat a failing merge.

use std::collections::{BTreeSet, HashSet};

use super::Table;

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

/// Plans reads for one device and learns from illegal-address exceptions.
#[derive(Clone, Debug)]
pub struct Planner {
    items: Vec<PlanItem>,
    max_gap: u16,
    holes: BTreeSet<(Table, u16)>,
    isolated: HashSet<usize>,
    plan: Plan,
}

impl Planner {
    /// A planner for these items, bridging gaps of up to `max_gap` registers.
    pub fn new(items: Vec<PlanItem>, max_gap: u16) -> Self {
        let mut p = Planner {
            items,
            max_gap,
            holes: BTreeSet::new(),
            isolated: HashSet::new(),
            plan: Vec::new(),
        };
        p.replan();
        p
    }

    /// The current plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Addresses learned to be holes.
    pub fn holes(&self) -> impl Iterator<Item = &(Table, u16)> {
        self.holes.iter()
    }

    fn replan(&mut self) {
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        order.sort_by_key(|&i| {
            (
                self.items[i].table,
                self.items[i].address,
                self.items[i].count,
            )
        });
        let mut plan: Plan = Vec::new();
        let mut cur: Option<(ReadRequest, u32)> = None;
        for i in order {
            let it = self.items[i];
            if self.isolated.contains(&i) {
                plan.push(ReadRequest {
                    table: it.table,
                    start: it.address,
                    count: it.count,
                    members: vec![i],
                });
                continue;
            }
            if let Some((req, end)) = cur.as_mut() {
                let max = u32::from(it.table.max_read());
                let new_end = (*end).max(it.end());
                let bridge_ok = u32::from(it.address) <= *end + u32::from(self.max_gap)
                    && !(*end..u32::from(it.address)).any(|a| {
                        u16::try_from(a).is_ok_and(|a| self.holes.contains(&(it.table, a)))
                    });
                if req.table == it.table && bridge_ok && new_end - u32::from(req.start) <= max {
                    *end = new_end;
                    req.count = (new_end - u32::from(req.start)) as u16;
                    req.members.push(i);
                    continue;
                }
            }
            if let Some((req, _)) = cur.take() {
                plan.push(req);
            }
            cur = Some((
                ReadRequest {
                    table: it.table,
                    start: it.address,
                    count: it.count,
                    members: vec![i],
                },
                it.end(),
            ));
        }
        if let Some((req, _)) = cur {
            plan.push(req);
        }
        plan.sort_by_key(|r| (r.table, r.start));
        self.plan = plan;
    }

    /// Learn from an exception 02 on `req`. Returns the requests that now replace it
    /// (empty when the request was already a single point: that point itself is invalid).
    pub fn learn_illegal_address(&mut self, req: &ReadRequest) -> Vec<ReadRequest> {
        let gaps = req.gaps(&self.items);
        if !gaps.is_empty() {
            self.holes.extend(gaps.into_iter().map(|a| (req.table, a)));
        } else if req.members.len() > 1 {
            self.isolated.extend(req.members.iter().copied());
        } else {
            return Vec::new();
        }
        self.replan();
        self.plan
            .iter()
            .filter(|r| r.members.iter().any(|m| req.members.contains(m)))
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

    #[test]
    fn exception_02_learns_holes_then_isolates() {
        let mut p = Planner::new(vec![reg(0, 1), reg(4, 1)], 8);
        let req = p.plan()[0].clone();
        assert_eq!(req.count, 5);
        let replaced = p.learn_illegal_address(&req);
        assert_eq!(replaced.len(), 2);
        assert_eq!(p.plan().len(), 2);
        assert_eq!(p.holes().count(), 3);
        // Contiguous points that still fail are read one by one.
        let mut p = Planner::new(vec![reg(0, 1), reg(1, 1)], 8);
        let req = p.plan()[0].clone();
        assert_eq!(p.learn_illegal_address(&req).len(), 2);
        let single = p.plan()[0].clone();
        assert!(p.learn_illegal_address(&single).is_empty());
    }
}
