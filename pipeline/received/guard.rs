//! The differencing guard: may a new table join what the analyst already received?
//!
//! For each measure the new table publishes, `system` builds the reader's linear system
//! over every related table; every group of `1 <= n < T` patients connected to the new
//! table's rows is then checked:
//! - its patient count must keep its PROTECTION INTERVAL: the reader's interval for it
//!   must reach down to `max(0, n - P)` and up to `min(n + P, U)`, where `P` is the rules'
//!   protection (by default `T`, as for a single table's small cell) and `U` is the
//!   smallest published upper bound of a row containing the group (what the published
//!   totals allow a priori: a group can never be shown to hold more patients than a cell
//!   it is in). A reader who can pin the count, or narrow it below this, refuses the table;
//! - every other measure's unknowns of the group (its rows, non-null rows or sum in one
//!   table) must keep a protection interval too: `[x - P, x + P]` for a count of rows
//!   (clipped at 0 and at the smallest published upper bound of a row containing it, as
//!   for patients), `[x - q, x + q]` with `q = S * max(|x|, 1)` for a sum (`S` the rules'
//!   relative sum protection, 10% by default: the p% rule's question, "how close can a
//!   reader get to a small group's total", asked of every small group), clipped at 0 for
//!   an unknown the reader knows is `>= 0`.
//!
//! Proofs come first from BOXES: four groups `g, a, b, h` where `a` differs from `g` in some
//! rows, `b` in other rows, and `h` in both, so moving one patient's worth from
//! `g` and `h` to `a` and `b` (or back) changes no published value; each box is a feasible
//! alternative truth, so boxes prove how far the reader's interval reaches. Groups the
//! boxes leave open go to linear programmes (`microlp`): a few over the whole block of
//! groups connected to the new table (each solution is an alternative truth, so one
//! programme proves many groups: minimise their counts, maximise them up to their needs),
//! then one group at a time over its neighbourhood (groups reached through shared rows, up
//! to a bound), the groups outside held at their true values (an inner bound: a pass is a
//! proof), which is exact once the neighbourhood is the whole block. A group not proven
//! within the budget refuses the table (fail closed). Every
//! limit counts work, never time. Messages name the earlier table and the change to make,
//! never a count, a value or a group's size.

use std::collections::VecDeque;

use hashbrown::HashMap;
use rayon::iter::{IntoParallelRefIterator, ParallelIterator};

use microlp::{ComparisonOp, OptimizationDirection, Problem};

use super::system::{System, mix};
use super::table::{Membership, PATIENTS, ReceivedTable};

fn row_hash(r: u32) -> u64 {
    mix(u64::from(r) ^ 0x5eed)
}

/// The rows in exactly one of two sorted row lists, sorted.
fn sym_diff(x: &[u32], y: &[u32]) -> Vec<u32> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(x.len() + y.len());
    while i < x.len() || j < y.len() {
        match (x.get(i), y.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                out.push(*a);
                i += 1;
            }
            (Some(a), None) => {
                out.push(*a);
                i += 1;
            }
            (_, Some(b)) => {
                out.push(*b);
                j += 1;
            }
            (None, None) => break,
        }
    }
    out
}

/// Whether every row of sorted `x` is in sorted `y`.
fn is_subset(x: &[u32], y: &[u32]) -> bool {
    let mut j = 0;
    for r in x {
        while j < y.len() && y[j] < *r {
            j += 1;
        }
        if j == y.len() || y[j] != *r {
            return false;
        }
        j += 1;
    }
    true
}

/// A row list as a 256-bit set of `row % 256`: two lists whose masks share no bit share
/// no row, and when every row id is below 256 the converse holds too.
fn row_mask(rows: &[u32]) -> [u64; 4] {
    let mut m = [0u64; 4];
    for r in rows {
        let b = (*r % 256) as usize;
        m[b / 64] |= 1 << (b % 64);
    }
    m
}

/// Whether two sorted row lists share no row.
fn disjoint(x: &[u32], y: &[u32]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < x.len() && j < y.len() {
        match x[i].cmp(&y[j]) {
            std::cmp::Ordering::Equal => return false,
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
        }
    }
    true
}

/// The guard's rules and work budget.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardRules {
    /// Groups of fewer patients than this are protected (the project's threshold).
    pub threshold: u32,
    /// How far the reader's interval for a small group's count (of patients or of rows)
    /// must reach each side (before the a-priori clip); by default the threshold.
    pub protection: f64,
    /// How far the reader's interval for a small group's sum must reach each side, as a
    /// share of its true value (at least of 1); by default 0.10.
    pub sum_protection: f64,
    /// Most (patient, cell) entries read over all tables of one check.
    pub max_entries: usize,
    /// Most groups in one measure's system.
    pub max_groups: usize,
    /// Most groups in one linear programme.
    pub lp_groups: usize,
    /// Most groups in a block-wide linear programme (proving many groups at once).
    pub block_groups: usize,
    /// Most linear programmes over more than `lp_groups` groups solved in one check.
    pub max_lp_solves: usize,
    /// Most linear programmes over at most `lp_groups` groups (one unknown's
    /// neighbourhood) solved per measure.
    pub max_local_solves: usize,
    /// Most groups considered as box corners per small group.
    pub box_candidates: usize,
    /// Most pairs of corners tried per small group.
    pub box_tries: usize,
}

impl GuardRules {
    /// The default budget for a project threshold `t`.
    pub fn new(threshold: u32) -> Self {
        GuardRules {
            threshold,
            protection: f64::from(threshold),
            sum_protection: 0.10,
            max_entries: 20_000_000,
            max_groups: 500_000,
            lp_groups: 200,
            block_groups: 20_000,
            max_lp_solves: 60,
            max_local_solves: 2_000,
            box_candidates: 64,
            box_tries: 1_500,
        }
    }
}

/// The guard's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardVerdict {
    /// The table may be released to the analyst.
    Clear,
    /// It may not: `earlier_table` is the job id of the earlier table it combines with
    /// (`None` when the new table on its own is the cause), `message` what happened and
    /// what to change. Neither holds a patient value.
    Refused {
        /// The earlier table (job id) involved; `None`: the new table alone.
        earlier_table: Option<String>,
        /// What to tell the analyst (and the audit log).
        message: String,
    },
}

/// One table with its patients, ready to check.
#[derive(Debug, Clone)]
pub struct Release {
    /// `cells.json`.
    pub table: ReceivedTable,
    /// `membership.parquet`, with patients interned by the same [`super::PatientIds`] as
    /// every other table of the check.
    pub membership: Membership,
}

/// Why a group fails.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Failure {
    /// The count or measure is fixed.
    Pinned,
    /// The count's interval is narrower than its protection.
    Narrowed,
    /// The budget ran out before a proof.
    Budget,
}

/// Check `new` against `earlier` (tables the same analyst received in the project, and
/// the project's exported releases, in any order; the first one involved is named).
pub fn check(new: &Release, earlier: &[Release], rules: &GuardRules) -> GuardVerdict {
    let input = related(new, earlier);
    let tables: Vec<(&ReceivedTable, &Membership)> =
        input.iter().map(|r| (&r.table, &r.membership)).collect();
    let mut solves = 0usize;
    for (mi, measure) in new.table.measures.iter().enumerate() {
        let published = new
            .table
            .cells
            .iter()
            .map(|c| c.values[mi])
            .chain(new.table.totals.iter().map(|t| t.values[mi]))
            .any(|v| v.bounds().is_some());
        if !published {
            continue;
        }
        let system = match System::build(measure, &tables, rules.max_groups) {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(_) => return budget_refusal(&input, "patient groups"),
        };
        let mut checker = Checker::new(&system, rules, &mut solves);
        let (block, small) = checker.small_groups_near_new();
        let outcome = if measure == PATIENTS {
            checker.counts_kept(&block, &small)
        } else {
            checker.measures_kept(&block, &small)
        };
        if let Err((g, f)) = outcome {
            return refusal(&system, &input, g, f, rules);
        }
    }
    GuardVerdict::Clear
}

/// `new` first, then the earlier tables that share patients with it, directly or through
/// other such tables (no other table can change what the new one reveals).
fn related<'a>(new: &'a Release, earlier: &'a [Release]) -> Vec<&'a Release> {
    let words = |r: &Release| r.membership.patient.iter().map(|p| *p as usize / 64).max();
    let size = std::iter::once(new)
        .chain(earlier)
        .filter_map(words)
        .max()
        .map_or(0, |m| m + 1);
    let bits = |r: &Release| {
        let mut b = vec![0u64; size];
        for p in &r.membership.patient {
            b[*p as usize / 64] |= 1 << (*p % 64);
        }
        b
    };
    let mut reached = bits(new);
    let mut taken = vec![false; earlier.len()];
    let mut out = vec![new];
    loop {
        let mut grew = false;
        for (i, e) in earlier.iter().enumerate() {
            if taken[i] {
                continue;
            }
            let b = bits(e);
            if b.iter().zip(&reached).any(|(x, y)| x & y != 0) {
                taken[i] = true;
                grew = true;
                for (r, x) in reached.iter_mut().zip(&b) {
                    *r |= x;
                }
            }
        }
        if !grew {
            break;
        }
    }
    out.extend(
        earlier
            .iter()
            .zip(&taken)
            .filter(|(_, t)| **t)
            .map(|(e, _)| e),
    );
    out
}

struct Checker<'s> {
    s: &'s System,
    rules: &'s GuardRules,
    solves: &'s mut usize,
    /// Neighbourhood programmes solved (see [`GuardRules::max_local_solves`]).
    local_solves: usize,
    /// Signature hash of each group (a sum over its rows, so hashes of boxes add up).
    sig_hash: Vec<u64>,
    /// Groups by signature hash.
    by_hash: HashMap<u64, Vec<u32>>,
    /// Per row, the groups in it, most patients first (where splits look for parts).
    row_groups: Vec<Vec<u32>>,
    /// Per row, whether no unknown in it may be negative.
    row_nonneg: Vec<bool>,
    /// Per row, the total truth of its unknowns.
    row_truth: Vec<f64>,
    /// Per row, the group in that row alone, if any.
    single_row: Vec<Option<u32>>,
}

/// A set of twins (see [`Checker::twins`]).
#[derive(Debug, Default)]
struct Twins {
    /// How many unknowns.
    vars: usize,
    /// Their total truth.
    truth: f64,
    /// How many may be negative.
    negatives: usize,
}

/// One unknown of a small group to prove: the interval it must reach, and whether it is
/// already proven to reach each end.
struct Open {
    /// The unknown.
    var: u32,
    /// Its group (named in a refusal).
    group: u32,
    /// How low the reader's interval must reach.
    lo: f64,
    /// How high.
    hi: f64,
    /// Proven to reach `lo`.
    down: bool,
    /// Proven to reach `hi`.
    up: bool,
}

/// Most rows left for which a split's next part is sought among the subsets of the rows
/// (beyond, among the groups in the first row).
const SUBSET_ROWS: usize = 10;

/// Most signatures looked up while searching one group's splits.
const SPLIT_LOOKUPS: usize = 4_096;

/// Rounds of block-wide programmes per direction, while each proves more (one table
/// whose cells share patients has thousands of small groups; each round proves a share).
const BLOCK_ROUNDS: usize = 16;

/// Rounds of block-wide programmes per direction for other measures, while each proves
/// more (an unknown in many cells, as a patient's rows in every code they have, is rarely
/// proven by boxes; each round is one programme of the solve budget).
const MEASURE_BLOCK_ROUNDS: usize = 24;

impl<'s> Checker<'s> {
    fn new(s: &'s System, rules: &'s GuardRules, solves: &'s mut usize) -> Self {
        let sig_hash: Vec<u64> = s
            .groups
            .iter()
            .map(|g| {
                g.rows
                    .iter()
                    .fold(0u64, |h, r| h.wrapping_add(row_hash(*r)))
            })
            .collect();
        let mut by_hash: HashMap<u64, Vec<u32>> = HashMap::with_capacity(s.groups.len());
        for (g, h) in sig_hash.iter().enumerate() {
            by_hash.entry(*h).or_default().push(g as u32);
        }
        // Rows in parallel; (patients, group) is a total order, so unstable sorts agree.
        let row_groups = s
            .row_vars
            .par_iter()
            .map(|vs| {
                let mut gs: Vec<u32> = vs.iter().map(|v| s.vars[*v as usize].group).collect();
                gs.sort_unstable();
                gs.dedup();
                gs.sort_unstable_by_key(|g| (std::cmp::Reverse(s.groups[*g as usize].n), *g));
                gs
            })
            .collect();
        let row_nonneg = s
            .row_vars
            .iter()
            .map(|vs| vs.iter().all(|v| s.vars[*v as usize].nonneg))
            .collect();
        let row_truth = s
            .row_vars
            .iter()
            .map(|vs| vs.iter().map(|v| s.vars[*v as usize].truth).sum())
            .collect();
        let mut single_row = vec![None; s.rows.len()];
        for (g, group) in s.groups.iter().enumerate() {
            if let [r] = group.rows.as_slice() {
                single_row[*r as usize] = Some(g as u32);
            }
        }
        Checker {
            row_groups,
            row_nonneg,
            row_truth,
            single_row,
            s,
            rules,
            solves,
            local_solves: 0,
            sig_hash,
            by_hash,
        }
    }

    /// The block of groups connected to the new table's rows, and its small groups (no
    /// other group can have changed).
    fn small_groups_near_new(&self) -> (Vec<u32>, Vec<u32>) {
        let s = self.s;
        let mut seen = vec![false; s.groups.len()];
        let mut row_seen = vec![false; s.rows.len()];
        let mut queue: VecDeque<u32> = s.table_rows[0].clone().collect();
        for r in s.table_rows[0].clone() {
            row_seen[r as usize] = true;
        }
        while let Some(r) = queue.pop_front() {
            for v in &s.row_vars[r as usize] {
                let g = s.vars[*v as usize].group as usize;
                if seen[g] {
                    continue;
                }
                seen[g] = true;
                for r2 in &s.groups[g].rows {
                    if !row_seen[*r2 as usize] {
                        row_seen[*r2 as usize] = true;
                        queue.push_back(*r2);
                    }
                }
            }
        }
        let block: Vec<u32> = (0..s.groups.len() as u32)
            .filter(|g| seen[*g as usize])
            .collect();
        let small = block
            .iter()
            .copied()
            .filter(|g| {
                let n = s.groups[*g as usize].n;
                n >= 1 && n < self.rules.threshold
            })
            .collect();
        (block, small)
    }

    /// The rows where groups `g` and `a` differ (one is in it, the other not), sorted.
    fn diff_rows(&self, g: u32, a: u32) -> Vec<u32> {
        sym_diff(
            &self.s.groups[g as usize].rows,
            &self.s.groups[a as usize].rows,
        )
    }

    /// Whether `g + h` and `a + b` are in exactly the same rows (a box is valid).
    fn is_box(&self, g: u32, h: u32, a: u32, b: u32) -> bool {
        let rows = |x: u32| self.s.groups[x as usize].rows.iter().copied();
        let mut left: Vec<u32> = rows(g).chain(rows(h)).collect();
        let mut right: Vec<u32> = rows(a).chain(rows(b)).collect();
        left.sort_unstable();
        right.sort_unstable();
        left == right && g != h
    }

    /// Every box through `g` (see the module) among the groups sharing its most specific
    /// rows, in a fixed order, until `visit(a, b, h)` says stop or the budget runs out.
    /// In a box, `a` differs from `g` in some rows, `b` in others (disjoint), and `h`
    /// differs from `g` in both: `g + h` and `a + b` are then in the same rows, row by row.
    /// (Rows, not tables: one table whose cells share patients, as counts per code, has
    /// boxes too.)
    fn boxes(&self, g: u32, mut visit: impl FnMut(u32, u32, u32) -> bool) {
        let s = self.s;
        let mut rows = s.groups[g as usize].rows.clone();
        rows.sort_by_key(|r| (s.row_vars[*r as usize].len(), *r));
        let mut candidates: Vec<(usize, u32, Vec<u32>, [u64; 4])> = Vec::new();
        let cap = self.rules.box_candidates;
        'rows: for r in rows {
            for v in &s.row_vars[r as usize] {
                let a = s.vars[*v as usize].group;
                if a != g && !candidates.iter().any(|c| c.1 == a) {
                    let diff = self.diff_rows(g, a);
                    let mask = row_mask(&diff);
                    candidates.push((diff.len(), a, diff, mask));
                    if candidates.len() >= cap {
                        break 'rows;
                    }
                }
            }
        }
        candidates.sort_unstable();
        // Masks decide disjointness alone when every row id fits in them.
        let exact = s.rows.len() <= 256;
        let mut tries = 0usize;
        for (i, (_, a, da, ma)) in candidates.iter().enumerate() {
            for (_, b, db, mb) in &candidates[i + 1..] {
                let apart = ma.iter().zip(mb).all(|(x, y)| x & y == 0);
                if !apart && (exact || !disjoint(da, db)) {
                    continue;
                }
                tries += 1;
                if tries > self.rules.box_tries {
                    return;
                }
                let want = self.sig_hash[*a as usize]
                    .wrapping_add(self.sig_hash[*b as usize])
                    .wrapping_sub(self.sig_hash[g as usize]);
                let Some(hs) = self.by_hash.get(&want) else {
                    continue;
                };
                let sig = sym_diff(&sym_diff(&s.groups[g as usize].rows, da), db);
                if let Some(h) = hs.iter().find(|h| s.groups[**h as usize].rows == sig)
                    && self.is_box(g, *h, *a, *b)
                    && visit(*a, *b, *h)
                {
                    return;
                }
            }
        }
    }

    /// What a small group's count needs: the interval `[lo, hi]` its reader's interval
    /// must reach (see the module).
    fn count_need(&self, g: u32) -> (f64, f64) {
        let s = self.s;
        let group = &s.groups[g as usize];
        let n = f64::from(group.n);
        let cap = group
            .rows
            .iter()
            .map(|r| s.rows[*r as usize].hi)
            .fold(f64::INFINITY, f64::min);
        let lo = (n - self.rules.protection).max(0.0);
        let hi = (n + self.rules.protection).min(cap).max(n);
        (lo, hi)
    }

    /// Whether boxes through `g` prove that its unknown reaches `down` below its truth and
    /// `up` above: moving an amount from `g` and `h` to `a` and `b` (or back) changes no
    /// published value, so `g` can give what `h` holds and take what both `a` and `b`
    /// hold; `amount` is what a group holds (`None`: it cannot be moved).
    fn box_reach(
        &self,
        g: u32,
        down: f64,
        up: f64,
        amount: impl Fn(u32) -> Option<f64>,
    ) -> (bool, bool) {
        let mut left_down: HashMap<u32, f64> = HashMap::new();
        let mut left_up: HashMap<u32, f64> = HashMap::new();
        let (mut got_down, mut got_up) = (0.0, 0.0);
        // The split into single-row groups first (patients with only that one code, in
        // a table by code the largest group of each row): one look per row, where the
        // boxes below try thousands of pairs.
        let rows = &self.s.groups[g as usize].rows;
        let parts: Option<Vec<u32>> = rows.iter().map(|r| self.single_row[*r as usize]).collect();
        if let Some(parts) = parts.filter(|p| p.len() >= 2 && !p.contains(&g))
            && let Some(holds) = parts
                .iter()
                .map(|x| amount(*x))
                .collect::<Option<Vec<f64>>>()
        {
            got_down = down;
            let take = holds.iter().copied().fold(up, f64::min).max(0.0);
            for (x, h) in parts.iter().zip(&holds) {
                left_up.insert(*x, h - take);
            }
            got_up = take;
            if got_up >= up {
                return (true, true);
            }
        }
        self.boxes(g, |a, b, h| {
            if got_down < down
                && let Some(ah) = amount(h)
            {
                let lh = left_down.entry(h).or_insert(ah);
                let take = lh.min(down - got_down);
                *lh -= take;
                got_down += take;
            }
            if got_up < up
                && let (Some(aa), Some(ab)) = (amount(a), amount(b))
            {
                let la = *left_up.entry(a).or_insert(aa);
                let lb = *left_up.entry(b).or_insert(ab);
                let take = la.min(lb).min(up - got_up);
                left_up.insert(a, la - take);
                left_up.insert(b, lb - take);
                got_up += take;
            }
            got_down >= down && got_up >= up
        });
        if got_down < down || got_up < up {
            self.splits(g, |parts| {
                let holds: Option<Vec<f64>> = parts.iter().map(|x| amount(*x)).collect();
                let Some(holds) = holds else {
                    return false;
                };
                // Down: `g` gives any amount to every part (they only receive).
                got_down = got_down.max(down);
                if got_up < up {
                    let take = parts
                        .iter()
                        .zip(&holds)
                        .map(|(x, h)| *left_up.entry(*x).or_insert(*h))
                        .fold(up - got_up, f64::min);
                    for x in parts {
                        if let Some(l) = left_up.get_mut(x) {
                            *l -= take;
                        }
                    }
                    got_up += take;
                }
                got_up >= up
            });
        }
        (got_down >= down, got_up >= up)
    }

    /// Every way, found within [`SPLIT_LOOKUPS`], of writing `g`'s rows as the rows of two
    /// or more other groups with no row in common (a SPLIT): moving an amount from `g` to
    /// every part, or from every part to `g`, changes no published value, because each of
    /// `g`'s rows holds exactly one part and no other row holds any. (A published total
    /// over all of them is in every part and so never splits.) `visit` gets the parts and
    /// says when to stop.
    fn splits(&self, g: u32, mut visit: impl FnMut(&[u32]) -> bool) {
        let rows = &self.s.groups[g as usize].rows;
        if rows.len() < 2 {
            return;
        }
        let mut budget = SPLIT_LOOKUPS;
        let mut parts = Vec::new();
        self.split_from(g, rows, &mut parts, &mut budget, &mut visit);
    }

    /// [`Checker::splits`] of the rows `left`, after `parts`; true when `visit` stopped.
    fn split_from(
        &self,
        g: u32,
        left: &[u32],
        parts: &mut Vec<u32>,
        budget: &mut usize,
        visit: &mut impl FnMut(&[u32]) -> bool,
    ) -> bool {
        let Some((first, rest)) = left.split_first() else {
            return parts.len() >= 2 && visit(parts);
        };
        if rest.len() > SUBSET_ROWS {
            // Too many subsets: the part holding `first` among the groups in its row,
            // those with most patients first.
            let s = self.s;
            for h in &self.row_groups[*first as usize] {
                let h = *h;
                if h == g {
                    continue;
                }
                if *budget == 0 {
                    return true;
                }
                *budget -= 1;
                let rows = &s.groups[h as usize].rows;
                if rows.first() == Some(first)
                    && is_subset(rows, left)
                    && self.split_with(g, left, h, parts, budget, visit)
                {
                    return true;
                }
            }
            return false;
        }
        // The part holding `first`: `first` alone (often the largest group: patients with
        // that one code), then with a subset of the rest, largest first.
        let all = (1u32 << rest.len()) - 1;
        for mask in std::iter::once(0).chain((1..=all).rev()) {
            if *budget == 0 {
                return true;
            }
            *budget -= 1;
            let mut part = vec![*first];
            part.extend(
                rest.iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, r)| *r),
            );
            let hash = part.iter().fold(0u64, |h, r| h.wrapping_add(row_hash(*r)));
            let found = self.by_hash.get(&hash).and_then(|hs| {
                hs.iter()
                    .copied()
                    .find(|h| *h != g && self.s.groups[*h as usize].rows == part)
            });
            if let Some(h) = found
                && self.split_with(g, left, h, parts, budget, visit)
            {
                return true;
            }
        }
        false
    }

    /// [`Checker::split_from`] after taking group `h` (whose rows are among `left`) as the
    /// next part; true when `visit` stopped.
    fn split_with(
        &self,
        g: u32,
        left: &[u32],
        h: u32,
        parts: &mut Vec<u32>,
        budget: &mut usize,
        visit: &mut impl FnMut(&[u32]) -> bool,
    ) -> bool {
        let remaining = sym_diff(left, &self.s.groups[h as usize].rows);
        parts.push(h);
        let stop = self.split_from(g, &remaining, parts, budget, visit);
        parts.pop();
        stop
    }

    /// Every small group's count keeps its protection interval: boxes first (moving
    /// patients), then the programmes of [`Checker::prove`].
    fn counts_kept(&mut self, block: &[u32], small: &[u32]) -> Result<(), (u32, Failure)> {
        let s = self.s;
        let mut open: Vec<Open> = Vec::new();
        for g in small {
            let n = f64::from(s.groups[*g as usize].n);
            let (lo, hi) = self.count_need(*g);
            let (down, up) = self.box_reach(*g, (n - lo).ceil(), (hi - n).ceil(), |x| {
                Some(f64::from(s.groups[x as usize].n))
            });
            if down && up {
                continue;
            }
            let o = Open {
                var: s.groups[*g as usize].vars[0],
                group: *g,
                lo,
                hi,
                down,
                up,
            };
            self.keep_open(block, &mut open, o, true)?;
        }
        self.prove(block, open, BLOCK_ROUNDS, true)
    }

    /// An unknown that boxes (and twins) left open: kept for the block-wide programmes
    /// of [`Checker::prove`] when the block allows them; else proven at once by its own
    /// neighbourhood programmes, the same ones `prove` would solve for it after every
    /// other group's boxes. A table that cannot be proven is then refused at its first
    /// unproven unknown, not after the boxes of every group (hundreds of thousands in a
    /// table by code over a million patients).
    fn keep_open(
        &mut self,
        block: &[u32],
        open: &mut Vec<Open>,
        o: Open,
        integer: bool,
    ) -> Result<(), (u32, Failure)> {
        if block.len() > self.rules.block_groups {
            self.prove(block, vec![o], 0, integer)
        } else {
            open.push(o);
            Ok(())
        }
    }

    /// What an unknown of another measure needs: the interval `[lo, hi]` the reader's
    /// interval for it must reach (see the module).
    fn measure_need(&self, v: u32) -> (f64, f64) {
        let s = self.s;
        let var = &s.vars[v as usize];
        let x = var.truth;
        let half = if s.measure.starts_with("sum:") {
            self.rules.sum_protection * x.abs().max(1.0)
        } else {
            self.rules.protection
        };
        // A published upper bound caps the unknown only when nothing else in its row
        // can be negative.
        let cap = s.groups[var.group as usize]
            .rows
            .iter()
            .zip(&s.groups[var.group as usize].vars)
            .filter(|(_, u)| **u == v)
            .map(|(r, _)| *r)
            .filter(|r| self.row_nonneg[*r as usize])
            .map(|r| s.rows[r as usize].hi)
            .fold(f64::INFINITY, f64::min);
        let lo = if var.nonneg {
            (x - half).max(0.0).min(x)
        } else {
            x - half
        };
        let hi = (x + half).min(cap).max(x);
        (lo, hi)
    }

    /// The unknowns in exactly the same rows as each other (TWINS: moving any amount from
    /// one to a twin changes no published value): per unknown, its set of twins, with
    /// the set's total truth and how many of them may be negative.
    fn twins(&self) -> (Vec<u32>, Vec<Twins>) {
        let s = self.s;
        // Each unknown's rows, flat (an unknown is in its group's rows in order, once
        // each, so each list is sorted).
        let mut start = vec![0usize; s.vars.len() + 1];
        for g in &s.groups {
            for v in &g.vars {
                start[*v as usize + 1] += 1;
            }
        }
        for v in 0..s.vars.len() {
            start[v + 1] += start[v];
        }
        let mut flat = vec![0u32; start[s.vars.len()]];
        let mut next = start.clone();
        for g in &s.groups {
            for (r, v) in g.rows.iter().zip(&g.vars) {
                flat[next[*v as usize]] = *r;
                next[*v as usize] += 1;
            }
        }
        drop(next);
        let mut index: HashMap<&[u32], u32> = HashMap::new();
        let mut sets: Vec<Twins> = Vec::new();
        let mut set_of = Vec::with_capacity(s.vars.len());
        for (v, var) in s.vars.iter().enumerate() {
            let rows = &flat[start[v]..start[v + 1]];
            let next = sets.len() as u32;
            let t = *index.entry(rows).or_insert(next);
            if t == next {
                sets.push(Twins::default());
            }
            let set = &mut sets[t as usize];
            set.vars += 1;
            set.truth += var.truth;
            set.negatives += usize::from(!var.nonneg);
            set_of.push(t);
        }
        (set_of, sets)
    }

    /// Whether twins prove that unknown `v` reaches down, and up, as far as it needs:
    /// `v` can give all it holds to a twin (down to 0, or without end when it may be
    /// negative) and take all a twin holds (without end when the twin may be negative).
    fn measure_twins(&self, v: u32, twins: &Twins) -> (bool, bool) {
        if twins.vars < 2 {
            return (false, false);
        }
        let var = &self.s.vars[v as usize];
        let (_, need_hi) = self.measure_need(v);
        // Down: a twin takes any amount `v` gives, and `v`'s need never reaches below 0
        // (or it may be negative).
        let down = true;
        let others_negative = twins.negatives - usize::from(!var.nonneg) > 0;
        let up = others_negative || twins.truth >= need_hi;
        (down, up)
    }

    /// The one unknown of group `g` when it stands for the group in every row it is in
    /// (each patient contributes alike to every cell), as a count's does.
    fn single_var(&self, g: u32) -> Option<u32> {
        let vars = &self.s.groups[g as usize].vars;
        let first = *vars.first()?;
        vars.iter().all(|v| *v == first).then_some(first)
    }

    /// Every unknown of another measure of every small group keeps its protection
    /// interval: twins, and boxes for a group with one unknown, first; then the
    /// programmes of [`Checker::prove`].
    fn measures_kept(&mut self, block: &[u32], small: &[u32]) -> Result<(), (u32, Failure)> {
        let s = self.s;
        let (twin_set, twins) = self.twins();
        let mut open = Vec::new();
        for g in small {
            for v in s.group_vars(*g) {
                let (lo, hi) = self.measure_need(v);
                let (mut down, mut up) =
                    self.measure_twins(v, &twins[twin_set[v as usize] as usize]);
                if !(down && up) && self.single_var(*g) == Some(v) {
                    let x = s.vars[v as usize].truth;
                    let amount = |y: u32| {
                        self.single_var(y)
                            .map(|w| &s.vars[w as usize])
                            .filter(|w| w.nonneg)
                            .map(|w| w.truth)
                    };
                    let (bd, bu) = self.box_reach(*g, x - lo, hi - x, amount);
                    down |= bd;
                    up |= bu;
                }
                if down && up {
                    continue;
                }
                let o = Open {
                    var: v,
                    group: *g,
                    lo,
                    hi,
                    down,
                    up,
                };
                self.keep_open(block, &mut open, o, false)?;
            }
        }
        self.prove(block, open, MEASURE_BLOCK_ROUNDS, false)
    }

    /// Prove that every unknown of `open` reaches its need: a value at its truth already
    /// does; then up to `rounds` programmes over the whole block per direction while each
    /// proves more (any solution is a table the reader cannot rule out, so one proves
    /// many: minimise the open unknowns, or maximise them up to their needs); then one
    /// unknown at a time over its neighbourhood. `integer`: the unknowns are counts, so
    /// an interval without two integers in it pins the value.
    fn prove(
        &mut self,
        block: &[u32],
        mut open: Vec<Open>,
        rounds: usize,
        integer: bool,
    ) -> Result<(), (u32, Failure)> {
        let s = self.s;
        let tol = |v: u32| 1e-6 * s.vars[v as usize].truth.abs().max(1.0);
        for o in &mut open {
            let x = s.vars[o.var as usize].truth;
            o.down |= x <= o.lo + tol(o.var);
            o.up |= x >= o.hi - tol(o.var);
        }
        open.retain(|o| !(o.down && o.up));
        if !open.is_empty() && block.len() <= self.rules.block_groups {
            for _ in 0..rounds {
                let down: Vec<(u32, f64)> = open
                    .iter()
                    .filter(|o| !o.down)
                    .map(|o| (o.var, 1.0))
                    .collect();
                if down.is_empty() {
                    break;
                }
                let Some(x) = self.block_solution(block, &down, &[]) else {
                    break;
                };
                let mut newly = false;
                for o in open.iter_mut().filter(|o| !o.down) {
                    if x[o.var as usize] <= o.lo + tol(o.var) {
                        o.down = true;
                        newly = true;
                    }
                }
                if !newly {
                    break;
                }
            }
            for _ in 0..rounds {
                let caps: Vec<(u32, f64)> = open
                    .iter()
                    .filter(|o| !o.up)
                    .map(|o| (o.var, o.hi))
                    .collect();
                if caps.is_empty() {
                    break;
                }
                let Some(x) = self.block_solution(block, &[], &caps) else {
                    break;
                };
                let mut newly = false;
                for o in open.iter_mut().filter(|o| !o.up) {
                    if x[o.var as usize] >= o.hi - tol(o.var) {
                        o.up = true;
                        newly = true;
                    }
                }
                if !newly {
                    break;
                }
            }
            open.retain(|o| !(o.down && o.up));
        }
        for o in open {
            self.prove_one(&o, integer, block.len())
                .map_err(|f| (o.group, f))?;
        }
        Ok(())
    }

    /// One unknown by linear programmes over its neighbourhood (see [`Checker::prove`]),
    /// in the directions still open only. The neighbourhoods grow from an eighth of
    /// `lp_groups` to `lp_groups`, then to the whole block (`block` groups) when
    /// block-wide programmes are allowed on it: an exact answer, whatever order the
    /// groups came in. In a larger block the last neighbourhood is four times
    /// `lp_groups`, solved within the budget of block-wide programmes (a small group in a
    /// rare cell whose other groups each reach many rows).
    fn prove_one(&mut self, o: &Open, integer: bool, block: usize) -> Result<(), Failure> {
        use OptimizationDirection::{Maximize, Minimize};
        let tol = 1e-6 * self.s.vars[o.var as usize].truth.abs().max(1.0);
        let mut limits = vec![self.rules.lp_groups / 8, self.rules.lp_groups];
        if block > self.rules.lp_groups && block <= self.rules.block_groups {
            limits.push(block);
        } else if block > self.rules.block_groups {
            limits.push(4 * self.rules.lp_groups);
        }
        let (mut down, mut up) = (o.down, o.up);
        for limit in limits {
            let (order, inside, whole) = self.neighbourhood(o.var, limit.max(2));
            let (mut lo, mut hi) = (None, None);
            if !down {
                let x = self.solve_counted(o.var, &order, &inside, Minimize)?;
                down = x <= o.lo + tol;
                lo = Some(x);
            }
            if !up {
                let x = self.solve_counted(o.var, &order, &inside, Maximize)?;
                up = x >= o.hi - tol;
                hi = Some(x);
            }
            if down && up {
                return Ok(());
            }
            if whole {
                // Refused either way: pinned when the whole interval holds one value (if
                // the budget allows finding out the end not solved yet), else narrowed.
                let lo =
                    lo.map_or_else(|| self.solve_counted(o.var, &order, &inside, Minimize), Ok);
                let hi =
                    hi.map_or_else(|| self.solve_counted(o.var, &order, &inside, Maximize), Ok);
                let pinned = match (lo, hi) {
                    (Ok(lo), Ok(hi)) if integer => (lo - tol).ceil() >= (hi + tol).floor(),
                    (Ok(lo), Ok(hi)) => hi - lo <= tol,
                    _ => false,
                };
                return Err(if pinned {
                    Failure::Pinned
                } else {
                    Failure::Narrowed
                });
            }
        }
        Err(Failure::Budget)
    }

    /// The reader's system over `groups` as a linear programme in direction `dir`: one
    /// variable per unknown of those groups (`>= 0` where the reader knows it, at most
    /// `upper` where given), with `objective`'s coefficient, and every row they are in as a
    /// constraint, the unknowns of groups outside (`inside` false) held at their truth (an
    /// inner bound: any solution is a table the reader cannot rule out). Returns the
    /// programme and each unknown's variable.
    fn programme(
        &self,
        groups: &[u32],
        inside: &[bool],
        objective: impl Fn(u32) -> f64,
        upper: &HashMap<u32, f64>,
        dir: OptimizationDirection,
    ) -> (Problem, HashMap<u32, microlp::Variable>) {
        let s = self.s;
        let mut p = Problem::new(dir);
        let mut index: HashMap<u32, microlp::Variable> = HashMap::new();
        // Per row reached, the unknowns inside it (each once: a group's unknowns stand in
        // distinct rows) and their truth; the rest of the row is held at its truth, the
        // row's total truth less theirs (never a walk over a row of thousands of groups).
        let mut in_row: std::collections::BTreeMap<u32, (Vec<u32>, f64)> =
            std::collections::BTreeMap::new();
        for g in groups {
            debug_assert!(inside[*g as usize], "a programme's groups are its inside");
            for v in s.group_vars(*g) {
                let top = upper.get(&v).copied().unwrap_or(f64::INFINITY);
                let bounds = if s.vars[v as usize].nonneg {
                    (0.0, top)
                } else {
                    (f64::NEG_INFINITY, top)
                };
                index.insert(v, p.add_var(objective(v), bounds));
            }
            let group = &s.groups[*g as usize];
            for (r, v) in group.rows.iter().zip(&group.vars) {
                let e = in_row.entry(*r).or_default();
                e.0.push(*v);
                e.1 += s.vars[*v as usize].truth;
            }
        }
        for (r, (vars, truth)) in in_row {
            let row = s.rows[r as usize];
            let fixed = self.row_truth[r as usize] - truth;
            let expr: Vec<(microlp::Variable, f64)> = vars
                .iter()
                .filter_map(|v| index.get(v).map(|x| (*x, 1.0)))
                .collect();
            if row.lo == row.hi {
                p.add_constraint(expr.as_slice(), ComparisonOp::Eq, row.lo - fixed);
            } else {
                p.add_constraint(expr.as_slice(), ComparisonOp::Ge, row.lo - fixed);
                p.add_constraint(expr.as_slice(), ComparisonOp::Le, row.hi - fixed);
            }
        }
        (p, index)
    }

    /// A solution of the reader's system over the whole `block` (closed under shared
    /// rows, so nothing outside it is held): minimising the `objective`, or, with `caps`,
    /// maximising the sum of `min(x, cap)` over them. The values are indexed by unknown
    /// (NaN outside the block); `None` when the programme fails or the budget is spent.
    fn block_solution(
        &mut self,
        block: &[u32],
        objective: &[(u32, f64)],
        caps: &[(u32, f64)],
    ) -> Option<Vec<f64>> {
        let s = self.s;
        if !self.spend(block.len()) {
            return None;
        }
        let (dir, coef): (_, HashMap<u32, f64>) = if caps.is_empty() {
            (
                OptimizationDirection::Minimize,
                objective.iter().copied().collect(),
            )
        } else {
            (OptimizationDirection::Maximize, HashMap::new())
        };
        let mut inside = vec![false; s.groups.len()];
        for g in block {
            inside[*g as usize] = true;
        }
        // Maximising: each capped unknown is held at or below its cap (its truth is),
        // with weight 1; one at its cap in the optimum reaches it.
        let capped: HashMap<u32, f64> = caps.iter().copied().collect();
        let (p, index) = self.programme(
            block,
            &inside,
            |v| {
                coef.get(&v)
                    .copied()
                    .unwrap_or(if capped.contains_key(&v) { 1.0 } else { 0.0 })
            },
            &capped,
            dir,
        );
        let sol = p.solve().ok()?.into_solution().ok()?;
        let mut out = vec![f64::NAN; s.vars.len()];
        for (v, x) in &index {
            out[*v as usize] = sol.var_value(*x);
        }
        Some(out)
    }

    /// The groups around `var`'s (at most `limit`), which of all groups they are, and
    /// whether they are the whole block. First every group of the group's own rare rows
    /// (rows of at most half `lp_groups` groups), then, pass by pass, from every row
    /// reached (the group's own rows first, then the others, rarest first) its largest
    /// groups not yet inside: one per row in the first pass, twice as many in each next
    /// one. A small group in a rare code and common ones is then beside every other group
    /// of its rare rows AND the large groups of every row they are in, the groups with
    /// patients to give (breadth first over one common row would fill the neighbourhood
    /// with that row's groups alone). The order does not depend on `limit`, so a larger
    /// neighbourhood holds every smaller one. Any neighbourhood is sound: the groups
    /// outside are held at their truth.
    fn neighbourhood(&self, var: u32, limit: usize) -> (Vec<u32>, Vec<bool>, bool) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let s = self.s;
        let start = s.vars[var as usize].group;
        let mut inside = vec![false; s.groups.len()];
        let mut order = vec![start];
        inside[start as usize] = true;
        let size = |r: u32| self.row_groups[r as usize].len();
        let own_rows = &s.groups[start as usize].rows;
        let mut own = own_rows.clone();
        own.sort_by_key(|r| (size(*r), *r));
        for r in own {
            if size(r) > self.rules.lp_groups / 2 {
                break;
            }
            for h in &self.row_groups[r as usize] {
                if order.len() >= limit {
                    return (order, inside, false);
                }
                if !inside[*h as usize] {
                    inside[*h as usize] = true;
                    order.push(*h);
                }
            }
        }
        let mut share = 1;
        loop {
            let mut row_seen = vec![false; s.rows.len()];
            let mut heap = BinaryHeap::new();
            let reach = |g: u32, heap: &mut BinaryHeap<_>, row_seen: &mut Vec<bool>| {
                for r in &s.groups[g as usize].rows {
                    if !row_seen[*r as usize] {
                        row_seen[*r as usize] = true;
                        let other = own_rows.binary_search(r).is_err();
                        heap.push(Reverse((other, size(*r), *r)));
                    }
                }
            };
            for g in order.clone() {
                reach(g, &mut heap, &mut row_seen);
            }
            let mut cut = false;
            while let Some(Reverse((_, _, r))) = heap.pop() {
                let mut taken = 0;
                for h in &self.row_groups[r as usize] {
                    if inside[*h as usize] {
                        continue;
                    }
                    if taken >= share || order.len() >= limit {
                        cut = true;
                        break;
                    }
                    inside[*h as usize] = true;
                    order.push(*h);
                    taken += 1;
                    reach(*h, &mut heap, &mut row_seen);
                }
            }
            if !cut {
                return (order, inside, true);
            }
            if order.len() >= limit {
                return (order, inside, false);
            }
            share *= 2;
        }
    }

    /// [`Checker::solve`] within the budget of programmes.
    fn solve_counted(
        &mut self,
        target: u32,
        groups: &[u32],
        inside: &[bool],
        dir: OptimizationDirection,
    ) -> Result<f64, Failure> {
        if !self.spend(groups.len()) {
            return Err(Failure::Budget);
        }
        self.solve(target, groups, inside, dir)
    }

    /// Count one programme over `groups` groups against its budget: the measure's
    /// neighbourhood programmes up to `lp_groups` groups, the check's large ones beyond.
    /// False, and nothing counted, when that budget is spent.
    fn spend(&mut self, groups: usize) -> bool {
        let (spent, max) = if groups <= self.rules.lp_groups {
            (&mut self.local_solves, self.rules.max_local_solves)
        } else {
            (&mut *self.solves, self.rules.max_lp_solves)
        };
        if *spent + 1 > max {
            return false;
        }
        *spent += 1;
        true
    }

    /// The reader's lowest (`Minimize`) or highest value of `target` over `groups`, the
    /// groups outside held at their truth ([`Checker::programme`]).
    fn solve(
        &self,
        target: u32,
        groups: &[u32],
        inside: &[bool],
        dir: OptimizationDirection,
    ) -> Result<f64, Failure> {
        let (p, index) = self.programme(
            groups,
            inside,
            |v| if v == target { 1.0 } else { 0.0 },
            &HashMap::new(),
            dir,
        );
        let Some(t) = index.get(&target) else {
            return Err(Failure::Budget);
        };
        match p.solve() {
            Ok(out) => out
                .into_solution()
                .map(|sol| sol.var_value(*t))
                .map_err(|_| Failure::Budget),
            Err(microlp::Error::Unbounded) => Ok(match dir {
                OptimizationDirection::Maximize => f64::INFINITY,
                OptimizationDirection::Minimize => f64::NEG_INFINITY,
            }),
            // An infeasible or failed programme proves nothing: fail closed.
            Err(_) => Err(Failure::Budget),
        }
    }
}

fn budget_refusal(input: &[&Release], what: &str) -> GuardVerdict {
    let earlier = input.len() - 1;
    let message = if earlier == 0 {
        format!(
            "this table could not be proven safe within the guard's budget: it has too many \
             {what} to check. Ask for coarser categories or a smaller population, or ask \
             the output checkers to raise the budget."
        )
    } else {
        format!(
            "this table could not be checked against the {earlier} tables you already \
             received over the same patients: there are too many {what} to check jointly \
             within the guard's budget. Ask for fewer, coarser tables over this population, \
             or ask the output checkers to raise the budget."
        )
    };
    GuardVerdict::Refused {
        earlier_table: input.get(1).map(|r| r.table.table.clone()),
        message,
    }
}

fn refusal(
    s: &System,
    input: &[&Release],
    g: u32,
    failure: Failure,
    rules: &GuardRules,
) -> GuardVerdict {
    let group = &s.groups[g as usize];
    // The earlier tables the group is in, else those of the groups it shares a row with.
    let mut tables: Vec<usize> = group
        .rows
        .iter()
        .map(|r| s.rows[*r as usize].table)
        .filter(|t| *t > 0)
        .collect();
    if tables.is_empty() {
        tables = group
            .rows
            .iter()
            .flat_map(|r| s.row_vars[*r as usize].iter())
            .flat_map(|v| s.groups[s.vars[*v as usize].group as usize].rows.iter())
            .map(|r| s.rows[*r as usize].table)
            .filter(|t| *t > 0)
            .collect();
    }
    tables.sort_unstable();
    tables.dedup();
    let t = rules.threshold;
    let what = if s.measure == PATIENTS {
        "how many patients are in".to_string()
    } else {
        format!("the {} of", s.measure)
    };
    let Some(first) = tables.first() else {
        if failure == Failure::Budget {
            return GuardVerdict::Refused {
                earlier_table: None,
                message: "this table could not be proven safe within the guard's budget: \
                          it has too many small groups of patients to check. Combine small \
                          categories, or ask the output checkers to raise the budget."
                    .to_string(),
            };
        }
        return GuardVerdict::Refused {
            earlier_table: None,
            message: format!(
                "this table on its own would let a reader work out {what} a group of fewer \
                 than {t} patients; combine small categories or widen the population"
            ),
        };
    };
    let earlier = input[*first].table.table.clone();
    let others = if tables.len() > 1 {
        format!(" (and {} other tables you received)", tables.len() - 1)
    } else {
        String::new()
    };
    let how = match failure {
        Failure::Pinned => format!("work out exactly {what}"),
        Failure::Narrowed => format!("narrow down too far {what}"),
        Failure::Budget => {
            return budget_refusal_named(&earlier, input.len() - 1);
        }
    };
    GuardVerdict::Refused {
        earlier_table: Some(earlier.clone()),
        message: format!(
            "together with table {earlier}{others} that you already received, this table \
             would let a reader {how} a group of fewer than {t} patients (patients who fall \
             in the same cells of both). Use the same population as {earlier}, or one that \
             differs from it by at least {t} patients in every cell; or combine the small \
             categories of both tables."
        ),
    }
}

fn budget_refusal_named(earlier: &str, n: usize) -> GuardVerdict {
    GuardVerdict::Refused {
        earlier_table: Some(earlier.to_string()),
        message: format!(
            "this table could not be proven safe together with table {earlier} (one of the \
             {n} tables you already received over the same patients) within the guard's \
             budget. Ask for coarser categories or fewer overlapping tables, or ask the \
             output checkers to raise the budget."
        ),
    }
}

#[cfg(test)]
mod box_tests {
    use super::{disjoint, sym_diff};

    #[test]
    fn a_box_is_composed_row_by_row() {
        // g in rows {1, 2, 5}; a differs in {2, 3}, b in {5, 7}: h = g with both changes.
        let g = [1, 2, 5];
        let da = sym_diff(&g, &[1, 3, 5]);
        let db = sym_diff(&g, &[1, 2, 7]);
        assert_eq!(da, vec![2, 3]);
        assert_eq!(db, vec![5, 7]);
        assert!(disjoint(&da, &db));
        assert_eq!(sym_diff(&sym_diff(&g, &da), &db), vec![1, 3, 7]);
        // g + h = a + b, row by row.
        let mut left = [1, 2, 5, 1, 3, 7];
        let mut right = [1, 3, 5, 1, 2, 7];
        left.sort_unstable();
        right.sort_unstable();
        assert_eq!(left, right);
        assert!(!disjoint(&[1, 4], &[4]));
        assert!(sym_diff(&[], &[]).is_empty());
    }
}
