//! Plans for the items due together: a device whose points have their own cadences reads,
//! in each cycle, only the points due then. Nothing else costs a read, but a point that
//! is not due rides along (decoded and published as usual) in any read of the cycle that
//! covers its registers whole.

use super::{Plan, Planner, ReadRequest};

/// Most subset plans kept per device (devices with more cadences than this plan again
/// now and then).
const MAX_SUBSETS: usize = 32;

impl Planner {
    /// The reads of one cycle that reads the items `due` marks (index = item; a missing
    /// mark is not due): as few reads as [`Planner::plan`] would need for them, with every
    /// item that is not due but is covered whole by one of those reads as a member too.
    /// Every item due: exactly [`Planner::plan`]. The plans are kept until something is
    /// learned, so a cycle that recurs costs no planning.
    pub fn plan_for(&mut self, due: &[bool]) -> &Plan {
        if due.len() >= self.items.len() && due.iter().all(|d| *d) {
            return &self.plan;
        }
        let i = match self.subsets.iter().position(|(d, _)| d.as_slice() == due) {
            Some(i) => i,
            None => {
                if self.subsets.len() >= MAX_SUBSETS {
                    self.subsets.clear();
                }
                let plan = self.build(Some(due));
                self.subsets.push((due.to_vec(), plan));
                self.subsets.len() - 1
            }
        };
        &self.subsets[i].1
    }

    /// Add every item that is not due and not known unreadable to the reads of `plan`
    /// that cover it whole (`order`: the items by table and address).
    pub(super) fn ride_along(
        &self,
        plan: &mut Plan,
        order: &[usize],
        is_due: impl Fn(usize) -> bool,
    ) {
        for &i in order {
            let it = self.items[i];
            if is_due(i) || self.unreadable.get(&i).is_some_and(|l| l.active) {
                continue;
            }
            let covers = |r: &ReadRequest| {
                r.table == it.table
                    && r.start <= it.address
                    && it.end() <= u32::from(r.start) + u32::from(r.count)
            };
            if let Some(r) = plan.iter_mut().find(|r| covers(r)) {
                r.members.push(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::super::{PlanItem, ReadLimits, RECHECK_FIRST};
    use super::*;
    use crate::modbus::Table;

    fn reg(address: u16, count: u16) -> PlanItem {
        PlanItem {
            table: Table::Holding,
            address,
            count,
        }
    }

    fn spans(plan: &[ReadRequest]) -> Vec<(u16, u16, Vec<usize>)> {
        plan.iter()
            .map(|r| {
                let mut m = r.members.clone();
                m.sort_unstable();
                (r.start, r.count, m)
            })
            .collect()
    }

    /// Every item due is the whole plan; a distant item that is not due costs nothing.
    #[test]
    fn only_due_items_are_read() {
        let mut p = Planner::new(vec![reg(0, 2), reg(2, 1), reg(1000, 2)], 8);
        let full = p.plan().clone();
        assert_eq!(full.len(), 2);
        assert_eq!(p.plan_for(&[true, true, true]), &full);
        assert_eq!(
            spans(p.plan_for(&[true, true, false])),
            [(0, 3, vec![0, 1])]
        );
        assert_eq!(
            spans(p.plan_for(&[false, false, true])),
            [(1000, 2, vec![2])]
        );
        assert!(p.plan_for(&[false, false, false]).is_empty());
        // A shorter mark list: the missing marks are not due.
        assert_eq!(spans(p.plan_for(&[false, true])), [(2, 1, vec![1])]);
    }

    /// Between two due items, one that is not due bridges (its registers exist) and
    /// rides along; at the edges it is not read.
    #[test]
    fn an_item_between_due_ones_rides_along_and_edges_are_trimmed() {
        let mut p = Planner::new(vec![reg(0, 1), reg(1, 1), reg(2, 1), reg(3, 2)], 0);
        // 0 and 2 due: 0..3 in one read, 1 rides along; 3..5 (not due) is not read.
        assert_eq!(
            spans(p.plan_for(&[true, false, true, false])),
            [(0, 3, vec![0, 1, 2])]
        );
        // Only 0 due: 0..1, nothing else.
        assert_eq!(
            spans(p.plan_for(&[true, false, false, false])),
            [(0, 1, vec![0])]
        );
        // Through items that are not due, a gap-less chain stays one read even with
        // max_gap 0; without them it would be two reads.
        assert_eq!(
            spans(p.plan_for(&[true, false, false, true])),
            [(0, 5, vec![0, 1, 2, 3])]
        );
        // Never more reads than the whole plan's.
        let mut p = Planner::new((0..40).map(|a| reg(a * 3, 1)).collect(), 2);
        let all = p.plan().len();
        for k in 1..40 {
            let due: Vec<bool> = (0..40).map(|i| i % k == 0).collect();
            assert!(p.plan_for(&due).len() <= all, "k = {k}");
        }
    }

    /// Read limits hold for subsets; a subset may need fewer reads than the whole.
    #[test]
    fn read_limits_hold_for_subsets() {
        let limits = ReadLimits {
            max_gap: 8,
            registers: 10,
            bits: 16,
        };
        let mut p = Planner::with_limits((0..30).map(|a| reg(a, 1)).collect(), limits);
        assert_eq!(p.plan().len(), 3);
        let mut due = vec![false; 30];
        due[8] = true;
        due[12] = true;
        // 8..13 fits one read of at most 10, with 9..12 riding along.
        assert_eq!(spans(p.plan_for(&due)), [(8, 5, vec![8, 9, 10, 11, 12])]);
        due[25] = true;
        let plan = p.plan_for(&due).clone();
        assert!(plan.iter().all(|r| r.count <= 10), "{plan:?}");
        assert_eq!(plan.len(), 2);
    }

    /// Holes and unreadable items learned in a subset cycle are kept; the replacement
    /// reads serve only the due items; every cached subset plan follows what is learned.
    #[test]
    fn learning_in_a_subset_cycle() {
        let t = Instant::now();
        // 0 and 4 (fast) around a hole at 1..4; 100 (slow) far away.
        let mut p = Planner::new(vec![reg(0, 1), reg(4, 1), reg(100, 1)], 8);
        let due = [true, true, false];
        let merged = p.plan_for(&due)[0].clone();
        assert_eq!((merged.start, merged.count), (0, 5));
        let replaced = p.learn_illegal_address_for(&merged, t, Some(&due));
        assert_eq!(
            replaced
                .iter()
                .map(|r| (r.start, r.count))
                .collect::<Vec<_>>(),
            [(0, 1), (4, 1)]
        );
        assert_eq!(
            p.plan_for(&due).len(),
            2,
            "the cached subset plan was replanned"
        );
        assert_eq!(p.holes().count(), 3);
        // A gap-less pair failing: each due item alone; the slow one is not read.
        let mut p = Planner::new(vec![reg(0, 1), reg(1, 1), reg(2, 1), reg(100, 1)], 8);
        let due = [true, false, true, false];
        let merged = p.plan_for(&due)[0].clone();
        assert_eq!(
            spans(std::slice::from_ref(&merged)),
            [(0, 3, vec![0, 1, 2])]
        );
        let replaced = p.learn_illegal_address_for(&merged, t, Some(&due));
        assert_eq!(
            spans(&replaced),
            [(0, 1, vec![0]), (2, 1, vec![2])],
            "suspects that are due are read alone, the one riding along waits for its turn"
        );
        // Item 2 fails alone: unreadable, out of every plan until its check.
        let single = replaced[1].clone();
        assert!(p
            .learn_illegal_address_for(&single, t, Some(&due))
            .is_empty());
        assert!(p.plan_for(&due).iter().all(|r| !r.members.contains(&2)));
        assert!(p.plan().iter().all(|r| !r.members.contains(&2)));
        // At its check it is read alone again, in a cycle it is due in.
        p.refresh(t + RECHECK_FIRST);
        assert!(p.plan_for(&due).iter().any(|r| r.members == [2]));
        assert!(p
            .plan_for(&[true, false, false, false])
            .iter()
            .all(|r| !r.members.contains(&2)));
    }

    /// Known unreadable items do not ride along; bits ride along like registers.
    #[test]
    fn unreadable_items_do_not_ride_along() {
        let t = Instant::now();
        let coil = |a| PlanItem {
            table: Table::Coil,
            address: a,
            count: 1,
        };
        let mut p = Planner::new(vec![coil(0), coil(1), coil(2)], 8);
        assert_eq!(
            spans(p.plan_for(&[true, false, true])),
            [(0, 3, vec![0, 1, 2])]
        );
        let single = ReadRequest {
            table: Table::Coil,
            start: 1,
            count: 1,
            members: vec![1],
        };
        assert!(p.learn_illegal_address(&single, t).is_empty());
        assert_eq!(
            spans(p.plan_for(&[true, false, true])),
            [(0, 3, vec![0, 2])]
        );
    }
}
