//! [`DispatchPlan`]: router decisions sorted into per-expert row lists by one counting sort.
//!
//! The plan is what the gathered kernels read: expert `e`'s rows are the sorted slots
//! `offsets[e]..offsets[e+1]`, slot `s` holds token `tokens[s]`, which came from assignment
//! `assignment[s]` of the [`Routing`] (so its gate is `gates[assignment[s]]`). It is a plain
//! value, inspectable and testable on its own, with no reference back to the routing.
//!
//! Capacity (GShard arXiv 2006.16668, Switch arXiv 2101.03961): with a capacity factor, each
//! expert takes at most `round(factor·S/E)` assignments, in assignment order, where the
//! [`Rounding`] is `ceil` unless the capacity says `floor`; the rest are *dropped* and their
//! tokens ride the residual for that assignment. Dropless routing (as in
//! MegaBlocks, arXiv 2211.15841) keeps everything.

use crate::error::{Error, Result};
use crate::routing::Routing;
use elide_autodiff::Var;
use std::ops::Range;
use std::sync::OnceLock;

/// How a fractional capacity (`factor·S/E` slots per expert, or `T·factor/E` tokens under
/// expert choice) becomes a whole number. Implementations differ, so a paper's numbers are
/// reproduced only with its rule: at `T = 37`, `E = 8`, factor 1, ceil gives 5 slots and floor 4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Rounding {
    /// `⌈x⌉`: never fewer slots than the factor asks for (elide's default; DeepSpeed-MoE).
    #[default]
    Ceil,
    /// `⌊x⌋`: truncation, as Mesh TensorFlow's `int(...)` (the Switch Transformer codebase).
    Floor,
}

impl Rounding {
    /// `x` rounded to a whole number this way (as a float; the caller clamps and converts).
    pub fn apply(self, x: f64) -> f64 {
        match self {
            Rounding::Ceil => x.ceil(),
            Rounding::Floor => x.floor(),
        }
    }
}

/// How many assignments an expert may take.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Capacity {
    /// Every assignment is kept.
    Dropless,
    /// Per-expert capacity `rounding(factor·S/E)` for `S` assignments over `E` experts, clamped
    /// to `[1, max(S, 1)]`: a capacity that computes to 0 slots (`S = 0`, or a floor below 1)
    /// becomes 1, and one above `S` can hold nothing more than `S`. The factor must be finite
    /// and `> 0`. [`Capacity::factor`] builds the usual ceil form.
    Factor {
        /// Capacity factor `f` (Switch uses 1.0–2.0).
        factor: f32,
        /// How `f·S/E` becomes a whole number of slots.
        rounding: Rounding,
    },
}

impl Capacity {
    /// `Capacity::Factor` with `⌈factor·S/E⌉` slots per expert.
    pub const fn factor(factor: f32) -> Capacity {
        Capacity::Factor { factor, rounding: Rounding::Ceil }
    }

    /// The same capacity with another rounding rule (no change for [`Capacity::Dropless`]).
    pub const fn rounded(self, rounding: Rounding) -> Capacity {
        match self {
            Capacity::Dropless => Capacity::Dropless,
            Capacity::Factor { factor, .. } => Capacity::Factor { factor, rounding },
        }
    }

    /// The per-expert slot count for `num_assignments` assignments over `num_experts`
    /// experts, or `None` when dropless.
    ///
    /// # Errors
    /// [`Error::CapacityFactor`] for a factor that is not finite or not positive.
    pub fn slots(self, num_assignments: usize, num_experts: usize) -> Result<Option<usize>> {
        match self {
            Capacity::Dropless => Ok(None),
            Capacity::Factor { factor, .. } if !(factor.is_finite() && factor > 0.0) => {
                Err(Error::CapacityFactor { op: "DispatchPlan", factor })
            }
            Capacity::Factor { factor, rounding } => {
                let c = rounding.apply(factor as f64 * num_assignments as f64 / num_experts.max(1) as f64);
                Ok(Some((c as usize).clamp(1, num_assignments.max(1))))
            }
        }
    }
}

/// `n` copies of `value`, or an error naming what was counted if the memory cannot be had (a
/// plan over `usize::MAX` tokens, say).
fn filled<T: Clone>(op: &'static str, what: &str, n: usize, value: T) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| Error::argument(op, format!("{n} {what} need more memory than can be allocated")))?;
    v.resize(n, value);
    Ok(v)
}

/// Router decisions sorted by destination (expert): offsets, row (token) lists, and what was
/// dropped.
///
/// Built only by [`DispatchPlan::new`] (or [`DispatchPlan::from_routing`]), which checks every
/// index, so the gathered ops can trust it; its parts are read through accessors.
#[derive(Clone, Debug)]
pub struct DispatchPlan {
    num_tokens: usize,
    num_experts: usize,
    offsets: Vec<usize>,
    tokens: Vec<u32>,
    assignment: Vec<u32>,
    dropped: Vec<u32>,
    dropped_token: Vec<u32>,
    capacity: Option<usize>,
    /// Each token's slots, ascending (a CSR: `start [T + 1]`, `slots [S_kept]`), built on first use.
    by_token: OnceLock<(Vec<usize>, Vec<u32>)>,
}

impl PartialEq for DispatchPlan {
    fn eq(&self, other: &DispatchPlan) -> bool {
        // `by_token` is derived from the rest.
        (self.num_tokens, self.num_experts, &self.offsets, &self.tokens, &self.assignment)
            == (other.num_tokens, other.num_experts, &other.offsets, &other.tokens, &other.assignment)
            && (&self.dropped, &self.dropped_token, self.capacity)
                == (&other.dropped, &other.dropped_token, other.capacity)
    }
}

impl DispatchPlan {
    /// Sorts the assignments `(tokens[i], experts[i])` by expert with one counting sort:
    /// count per expert → prefix offsets → stable scatter of assignment indices; then one
    /// walk over each expert's list refuses duplicate (token, expert) pairs and applies the
    /// capacity. `O(S + T + E)` time, no comparison sort.
    ///
    /// # Errors
    /// [`Error::Shape`] if `tokens` and `experts` differ in length; [`Error::Argument`] for
    /// `num_experts = 0`; [`Error::OutOfRange`] for a token `>= num_tokens` or an expert
    /// `>= num_experts`; [`Error::DuplicateAssignment`] for a (token, expert) pair named
    /// twice; [`Error::CapacityFactor`] for a bad factor.
    pub fn new(
        tokens: &[u32],
        experts: &[u32],
        num_tokens: usize,
        num_experts: usize,
        capacity: Capacity,
    ) -> Result<DispatchPlan> {
        const OP: &str = "DispatchPlan";
        if tokens.len() != experts.len() {
            return Err(Error::shape(
                OP,
                format!("{} tokens but {} experts given: one of each per assignment", tokens.len(), experts.len()),
            ));
        }
        if num_experts == 0 {
            return Err(Error::argument(OP, "num_experts must be at least 1"));
        }
        let s = tokens.len();
        let cap = capacity.slots(s, num_experts)?;

        // 1. Count per expert, checking every id on the way.
        let mut counts = filled(OP, "experts", num_experts, 0usize)?;
        for (i, (&t, &e)) in tokens.iter().zip(experts).enumerate() {
            if t as usize >= num_tokens {
                return Err(Error::OutOfRange { op: OP, what: "token", value: t, position: i, bound: num_tokens });
            }
            if e as usize >= num_experts {
                return Err(Error::OutOfRange { op: OP, what: "expert", value: e, position: i, bound: num_experts });
            }
            counts[e as usize] += 1;
        }

        // 2. Prefix offsets: of every assignment, and of the kept ones.
        let mut all_offsets = Vec::with_capacity(num_experts + 1);
        let mut offsets = Vec::with_capacity(num_experts + 1);
        let (mut all, mut kept) = (0, 0);
        for &c in &counts {
            all_offsets.push(all);
            offsets.push(kept);
            all += c;
            kept += cap.map_or(c, |cap| c.min(cap));
        }
        all_offsets.push(all);
        offsets.push(kept);

        // 3. Stable scatter of assignment indices by expert.
        let mut order = vec![0u32; s];
        let mut cursor = all_offsets[..num_experts].to_vec();
        for (i, &e) in experts.iter().enumerate() {
            order[cursor[e as usize]] = i as u32;
            cursor[e as usize] += 1;
        }

        // 4. One walk per expert: refuse duplicates (a token seen twice by the same expert),
        //    keep the first `cap` assignments, drop the rest.
        const UNSEEN: u32 = u32::MAX;
        let mut seen_by = filled(OP, "tokens", num_tokens, (UNSEEN, 0u32))?; // (expert, assignment) per token
        let mut plan_tokens = Vec::with_capacity(kept);
        let mut assignment = Vec::with_capacity(kept);
        let mut is_dropped = vec![false; if cap.is_some() { s } else { 0 }];
        for e in 0..num_experts {
            for (j, &i) in order[all_offsets[e]..all_offsets[e + 1]].iter().enumerate() {
                let t = tokens[i as usize];
                let (seen_expert, first) = seen_by[t as usize];
                if seen_expert == e as u32 {
                    return Err(Error::DuplicateAssignment {
                        token: t,
                        expert: e as u32,
                        first: first as usize,
                        second: i as usize,
                    });
                }
                seen_by[t as usize] = (e as u32, i);
                if cap.is_none_or(|cap| j < cap) {
                    plan_tokens.push(t);
                    assignment.push(i);
                } else {
                    is_dropped[i as usize] = true;
                }
            }
        }
        let dropped: Vec<u32> = (0..s as u32).filter(|&i| is_dropped.get(i as usize) == Some(&true)).collect();
        let dropped_token = dropped.iter().map(|&i| tokens[i as usize]).collect();
        Ok(DispatchPlan {
            num_tokens,
            num_experts,
            offsets,
            tokens: plan_tokens,
            assignment,
            dropped,
            dropped_token,
            capacity: cap,
            by_token: OnceLock::new(),
        })
    }

    /// The plan of a [`Routing`]'s assignments.
    ///
    /// # Errors
    /// As [`DispatchPlan::new`].
    pub fn from_routing(r: &Routing, capacity: Capacity) -> Result<DispatchPlan> {
        DispatchPlan::new(&r.tokens, &r.experts, r.num_tokens, r.num_experts, capacity)
    }

    /// Number of tokens (source rows) `T`.
    pub fn num_tokens(&self) -> usize {
        self.num_tokens
    }

    /// Number of experts (destinations) `E`.
    pub fn num_experts(&self) -> usize {
        self.num_experts
    }

    /// `[E + 1]`: expert `e`'s slots are the sorted positions `offsets[e]..offsets[e+1]`.
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// `[S_kept]` the token of each sorted slot. Stable: within an expert, slots follow
    /// assignment order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// `[S_kept]` the assignment (index into `Routing::tokens`/`gates`) of each sorted slot.
    pub fn assignment(&self) -> &[u32] {
        &self.assignment
    }

    /// Assignment indices dropped for capacity, ascending. Within an expert the later
    /// assignments drop first, as in Switch.
    pub fn dropped(&self) -> &[u32] {
        &self.dropped
    }

    /// `[dropped().len()]` the token of each dropped assignment.
    pub fn dropped_token(&self) -> &[u32] {
        &self.dropped_token
    }

    /// The per-expert capacity, `None` when dropless.
    pub fn capacity(&self) -> Option<usize> {
        self.capacity
    }

    /// Each token's slots in increasing order, as a CSR `(start [T + 1], slots [S_kept])`:
    /// token `t`'s slots are `slots[start[t]..start[t + 1]]`. Built by one counting pass on
    /// first use and kept.
    pub fn slots_by_token(&self) -> (&[usize], &[u32]) {
        let (start, slots) = self.by_token.get_or_init(|| {
            let mut start = vec![0usize; self.num_tokens + 1];
            for &t in &self.tokens {
                start[t as usize + 1] += 1;
            }
            for i in 0..self.num_tokens {
                start[i + 1] += start[i];
            }
            let mut fill = start.clone();
            let mut slots = vec![0u32; self.tokens.len()];
            for (s, &t) in self.tokens.iter().enumerate() {
                slots[fill[t as usize]] = s as u32;
                fill[t as usize] += 1;
            }
            (start, slots)
        });
        (start, slots)
    }

    /// Expert `e`'s sorted slots.
    ///
    /// # Panics
    /// If `e >= num_experts`.
    pub fn expert_range(&self, e: usize) -> Range<usize> {
        self.offsets[e]..self.offsets[e + 1]
    }

    /// The number of kept assignments (sorted slots) `S_kept`.
    pub fn num_kept(&self) -> usize {
        self.tokens.len()
    }

    /// The number of kept assignments of each expert.
    pub fn tokens_per_expert(&self) -> Vec<usize> {
        self.offsets.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// The tokens that lost at least one assignment to capacity, ascending, each once.
    pub fn dropped_tokens(&self) -> Vec<u32> {
        let mut t = self.dropped_token.clone();
        t.sort_unstable();
        t.dedup();
        t
    }

    /// The gates of the kept slots in sorted order, `[S_kept]`, differentiable: `gates`
    /// (`[S]`, the routing's) gathered by [`DispatchPlan::assignment`].
    ///
    /// # Errors
    /// If `gates` is not the `[S]` gate vector this plan was built from.
    pub fn slot_gates(&self, gates: &Var) -> Result<Var> {
        let s = self.num_kept() + self.dropped.len();
        if gates.shape() != [s] {
            return Err(Error::shape(
                "DispatchPlan::slot_gates",
                format!("gates must be [{s}] (one per assignment of the plan), got {:?}", gates.shape()),
            ));
        }
        Ok(gates.index_select(0, &self.assignment)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::random_token_choice;
    use elide_tensor::{Rng, Tensor};

    /// Reference: loop over experts, collecting their assignments in order; the first `cap`
    /// are kept.
    fn naive_plan(experts: &[u32], e: usize, cap: Option<usize>) -> (Vec<usize>, Vec<u32>, Vec<u32>) {
        let (mut offsets, mut slots, mut dropped) = (vec![0], Vec::new(), Vec::new());
        for x in 0..e as u32 {
            let mine: Vec<usize> = (0..experts.len()).filter(|&i| experts[i] == x).collect();
            for (j, &i) in mine.iter().enumerate() {
                if cap.is_none_or(|c| j < c) {
                    slots.push(i as u32);
                } else {
                    dropped.push(i as u32);
                }
            }
            offsets.push(slots.len());
        }
        dropped.sort_unstable();
        (offsets, slots, dropped)
    }

    #[track_caller]
    fn check_against_naive(tokens: &[u32], experts: &[u32], t: usize, e: usize, capacity: Capacity) -> DispatchPlan {
        let plan = DispatchPlan::new(tokens, experts, t, e, capacity).unwrap();
        let cap = capacity.slots(tokens.len(), e).unwrap();
        let (offsets, slots, dropped) = naive_plan(experts, e, cap);
        assert_eq!(plan.capacity, cap);
        assert_eq!(plan.offsets, offsets, "T = {t}, E = {e}, {capacity:?}");
        assert_eq!(plan.assignment, slots);
        let want_tokens: Vec<u32> = slots.iter().map(|&i| tokens[i as usize]).collect();
        assert_eq!(plan.tokens, want_tokens);
        assert_eq!(plan.dropped, dropped);
        assert_eq!(plan.dropped_token, dropped.iter().map(|&i| tokens[i as usize]).collect::<Vec<_>>());
        assert_eq!(plan.num_kept() + plan.dropped.len(), tokens.len());
        plan
    }

    #[test]
    fn plans_match_the_naive_reference() {
        let capacities = [
            Capacity::Dropless,
            Capacity::factor(1.0),
            Capacity::factor(0.5),
            Capacity::factor(1.25),
            Capacity::factor(1.25).rounded(Rounding::Floor),
        ];
        for e in [1, 3, 8, 64] {
            for t in [1, 7, 100] {
                for k in [1, 2, 8].into_iter().filter(|&k| k <= e) {
                    let (tokens, experts) = random_token_choice(t, e, k, (t * 1000 + e * 10 + k) as u64);
                    // Token-major (token choice) and expert-major (expert choice) orders.
                    let mut by_expert: Vec<usize> = (0..tokens.len()).collect();
                    by_expert.sort_by_key(|&i| experts[i]);
                    let tokens_em: Vec<u32> = by_expert.iter().map(|&i| tokens[i]).collect();
                    let experts_em: Vec<u32> = by_expert.iter().map(|&i| experts[i]).collect();
                    for capacity in capacities {
                        check_against_naive(&tokens, &experts, t, e, capacity);
                        check_against_naive(&tokens_em, &experts_em, t, e, capacity);
                    }
                }
            }
        }
    }

    #[test]
    fn an_expert_with_no_tokens_gets_an_empty_range() {
        let (tokens, experts) = ([0, 1, 2, 3], [0, 2, 0, 2]);
        let plan = check_against_naive(&tokens, &experts, 4, 3, Capacity::Dropless);
        assert_eq!(plan.expert_range(1), 2..2);
        assert_eq!(plan.tokens_per_expert(), vec![2, 0, 2]);
        assert_eq!((plan.tokens, plan.assignment), (vec![0, 2, 1, 3], vec![0, 2, 1, 3]));
    }

    #[test]
    fn all_tokens_to_one_expert() {
        let tokens: Vec<u32> = (0..10).collect();
        let experts = vec![2u32; 10];
        let plan = check_against_naive(&tokens, &experts, 10, 4, Capacity::Dropless);
        assert_eq!(plan.tokens_per_expert(), vec![0, 0, 10, 0]);
        assert_eq!(plan.expert_range(2), 0..10);
        // Capacity ceil(1.0·10/4) = 3: the first three stay, the later seven drop.
        let plan = check_against_naive(&tokens, &experts, 10, 4, Capacity::factor(1.0));
        assert_eq!((plan.capacity, plan.tokens.clone()), (Some(3), vec![0, 1, 2]));
        assert_eq!(plan.dropped, (3..10).collect::<Vec<u32>>());
        assert_eq!(plan.dropped_tokens(), (3..10).collect::<Vec<u32>>());
    }

    #[test]
    fn capacity_rounds_floor_or_ceil_at_t37_e8() {
        // Switch top-1, T = 37 tokens over E = 8 experts, cf = 1: cf·S/E = 4.625 slots.
        // Token t goes to expert t mod 3: experts 0, 1, 2 receive 13, 12, 12 assignments.
        let tokens: Vec<u32> = (0..37).collect();
        let experts: Vec<u32> = (0..37).map(|t| t % 3).collect();
        let ceil = Capacity::factor(1.0);
        let floor = ceil.rounded(Rounding::Floor);
        assert_eq!(floor, Capacity::Factor { factor: 1.0, rounding: Rounding::Floor });
        assert_eq!((ceil.slots(37, 8).unwrap(), floor.slots(37, 8).unwrap()), (Some(5), Some(4)));
        let plan = check_against_naive(&tokens, &experts, 37, 8, ceil);
        assert_eq!((plan.tokens_per_expert(), plan.dropped().len()), (vec![5, 5, 5, 0, 0, 0, 0, 0], 37 - 15));
        let plan = check_against_naive(&tokens, &experts, 37, 8, floor);
        assert_eq!((plan.tokens_per_expert(), plan.dropped().len()), (vec![4, 4, 4, 0, 0, 0, 0, 0], 37 - 12));
        // Expert 0 keeps its first four tokens 0, 3, 6, 9 under floor (the fifth, 12, drops).
        assert_eq!(plan.tokens()[..4], [0, 3, 6, 9]);
        // A floor below one slot is clamped to 1, like a ceil of 0.
        assert_eq!(Capacity::factor(0.1).rounded(Rounding::Floor).slots(37, 8).unwrap(), Some(1));
        assert_eq!(Capacity::Dropless.rounded(Rounding::Floor), Capacity::Dropless);
    }

    #[test]
    fn dropped_tokens_are_listed_once() {
        // Token 1 loses both of its assignments, token 2 one of its two.
        let (tokens, experts) = ([0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 2, 0]);
        let plan = DispatchPlan::new(&tokens, &experts, 3, 3, Capacity::factor(0.5)).unwrap();
        assert_eq!(plan.capacity, Some(1));
        assert_eq!(plan.dropped, vec![2, 3, 5]);
        assert_eq!(plan.dropped_token, vec![1, 1, 2]);
        assert_eq!(plan.dropped_tokens(), vec![1, 2]);
    }

    #[test]
    fn zero_slot_capacity_is_clamped_to_one() {
        // S = 0 would give ceil(factor·0/E) = 0 slots: the capacity is clamped to 1.
        let plan = DispatchPlan::new(&[], &[], 0, 3, Capacity::factor(1.0)).unwrap();
        assert_eq!((plan.capacity, plan.offsets.clone(), plan.num_kept()), (Some(1), vec![0; 4], 0));
        assert_eq!(Capacity::factor(1e-30).slots(5, 64).unwrap(), Some(1));
        assert_eq!(Capacity::factor(1e30).slots(5, 2).unwrap(), Some(5));
        assert_eq!(Capacity::Dropless.slots(5, 2).unwrap(), None);
        // An empty routing gives an empty plan.
        let plan = DispatchPlan::from_routing(&Routing::empty(4), Capacity::Dropless).unwrap();
        assert_eq!((plan.offsets.clone(), plan.tokens_per_expert()), (vec![0; 5], vec![0; 4]));
    }

    #[test]
    fn bad_plans_are_refused_with_a_clear_message() {
        // Sizes no memory can hold are errors, not allocation panics.
        let err = DispatchPlan::new(&[], &[], 1, usize::MAX, Capacity::Dropless).unwrap_err().to_string();
        assert_eq!(err, format!("DispatchPlan: {} experts need more memory than can be allocated", usize::MAX));
        let err = DispatchPlan::new(&[], &[], usize::MAX, 2, Capacity::Dropless).unwrap_err().to_string();
        assert_eq!(err, format!("DispatchPlan: {} tokens need more memory than can be allocated", usize::MAX));
        let err = |tokens: &[u32], experts: &[u32], capacity| {
            DispatchPlan::new(tokens, experts, 6, 3, capacity).unwrap_err().to_string()
        };
        assert_eq!(
            err(&[0, 5, 1, 5], &[0, 2, 1, 2], Capacity::Dropless),
            "DispatchPlan: token 5 is assigned to expert 2 twice (assignments 1 and 3); duplicate expert ids refused"
        );
        // Refused even when the duplicate would have been dropped for capacity.
        assert_eq!(
            err(&[0, 1, 0], &[1, 1, 1], Capacity::factor(0.5)),
            "DispatchPlan: token 0 is assigned to expert 1 twice (assignments 0 and 2); duplicate expert ids refused"
        );
        assert_eq!(
            err(&[0, 1], &[0], Capacity::Dropless),
            "DispatchPlan: 2 tokens but 1 experts given: one of each per assignment"
        );
        assert_eq!(
            err(&[0, 6], &[0, 1], Capacity::Dropless),
            "DispatchPlan: token 6 at assignment 1 is out of range for 6 tokens"
        );
        assert_eq!(
            err(&[0, 1], &[0, 3], Capacity::Dropless),
            "DispatchPlan: expert 3 at assignment 1 is out of range for 3 experts"
        );
        for factor in [0.0, -0.5, f32::NAN, f32::INFINITY] {
            assert_eq!(
                err(&[0], &[0], Capacity::factor(factor)),
                format!("DispatchPlan: capacity factor {factor} must be finite and > 0")
            );
        }
        let e = DispatchPlan::new(&[], &[], 4, 0, Capacity::Dropless).unwrap_err();
        assert_eq!(e.to_string(), "DispatchPlan: num_experts must be at least 1");
    }

    #[test]
    fn slot_gates_follow_the_sorted_slots() {
        let (tokens, experts) = ([0, 0, 1, 1], [1, 0, 0, 1]);
        let plan = DispatchPlan::new(&tokens, &experts, 2, 2, Capacity::Dropless).unwrap();
        let gates = Var::leaf(Tensor::from_vec(vec![0.1, 0.2, 0.3, 0.4], &[4]).unwrap());
        let slot = plan.slot_gates(&gates).unwrap();
        assert_eq!(slot.value().to_vec(), vec![0.2, 0.3, 0.1, 0.4]);
        let grads = slot.mul(&Var::constant(Tensor::arange(4))).unwrap().sum_all().backward().unwrap();
        assert_eq!(grads.of(&gates).unwrap().to_vec(), vec![2.0, 0.0, 1.0, 3.0]);
        let err = plan.slot_gates(&Var::constant(Tensor::randn(&[3], &mut Rng::seed(0)))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "DispatchPlan::slot_gates: gates must be [4] (one per assignment of the plan), got [3]"
        );
    }
}
