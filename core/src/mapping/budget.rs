//! Bounds on mapping one raw item: time, jq call depth (stack), memory, and input nesting. A
//! mapping is user code run on third-party data; neither may stop, hang or exhaust the agent.
//!
//! jaq has no hook for a budget, but it looks up its lookup table (`lut()`) for every term it
//! evaluates: the engine's data type ([`Guarded`]) checks the budget there. An exhausted budget
//! unwinds the evaluation with a panic carrying [`Exceeded`]; [`guarded`] catches it (and any
//! other panic inside the engine) and turns it into an error for the item.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The bounds of one item's evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall time for all of the item's expressions.
    pub time: Duration,
    /// Growth of the process's resident memory while the item is evaluated (Linux).
    pub memory_bytes: u64,
    /// Stack the jq evaluation may use (deep recursion in jq code).
    pub stack_bytes: usize,
    /// Nesting of arrays and objects in a raw item.
    pub nesting: usize,
    /// An entity larger than this, as JSON, is an item error: Port would refuse its request.
    pub entity_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            time: Duration::from_secs(1),
            memory_bytes: 512 * 1024 * 1024,
            stack_bytes: 64 * 1024 * 1024,
            // Ocean reads items with Python's json, which stops near 1,000 levels.
            nesting: 1000,
            // Port's limit for one bulk request's body.
            entity_bytes: 1024 * 1024,
        }
    }
}

/// Stack reserved for a thread that evaluates mappings: the jq call depth stops at
/// `Limits::stack_bytes`, and values built deep at run time need room to be dropped. Only the
/// pages touched take memory.
pub const EVALUATION_STACK_BYTES: usize = 1024 * 1024 * 1024;

/// Why an evaluation was stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exceeded {
    Time(Duration),
    Memory(u64),
    Depth(usize),
    /// A regular expression backtracked past Oniguruma's retry limit.
    Backtracking,
    /// The engine panicked (a bug, caught): the message.
    Panic(String),
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exceeded::Time(limit) => write!(
                f,
                "evaluation took longer than {} ms (limits.item_time_ms)",
                limit.as_millis()
            ),
            Exceeded::Memory(limit) => write!(
                f,
                "evaluation used more than {} MiB of memory (limits.item_memory_mib)",
                limit / (1024 * 1024)
            ),
            Exceeded::Depth(limit) => write!(
                f,
                "recursion went deeper than {} MiB of stack (a jq function that never stops calling itself?)",
                limit / (1024 * 1024)
            ),
            Exceeded::Backtracking => write!(
                f,
                "a regular expression backtracked past the retry limit (catastrophic backtracking)"
            ),
            Exceeded::Panic(message) => write!(f, "the jq engine failed: {message}"),
        }
    }
}

/// The budget of the item being evaluated on this thread.
#[derive(Debug, Clone, Copy)]
struct Budget {
    limits: Limits,
    deadline: Instant,
    /// The stack address when the item began; the stack grows down from it.
    stack_base: usize,
    /// Resident memory at the item's first memory check (read then, not at every item's
    /// start: most items never reach one).
    resident_at_start: Option<u64>,
    ticks: u32,
}

thread_local! {
    static BUDGET: Cell<Option<Budget>> = const { Cell::new(None) };
}

/// An address on the current stack.
fn stack_address() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

/// Resident memory of the process, in bytes (Linux; `None` elsewhere).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Runs `work` (the evaluation of one item) under `limits`.
pub fn for_item<T>(limits: &Limits, work: impl FnOnce() -> T) -> T {
    struct Reset(Option<Budget>);
    impl Drop for Reset {
        fn drop(&mut self) {
            BUDGET.with(|b| b.set(self.0));
        }
    }
    let budget = Budget {
        limits: *limits,
        deadline: Instant::now() + limits.time,
        stack_base: stack_address(),
        resident_at_start: None,
        ticks: 0,
    };
    let _reset = Reset(BUDGET.with(|b| b.replace(Some(budget))));
    work()
}

/// Stops the evaluation on this thread: unwinds to [`guarded`].
pub(crate) fn exceed(why: Exceeded) -> ! {
    std::panic::panic_any(why)
}

/// Called for every term jaq evaluates: cheap, and every so often it looks at the clock and
/// the memory.
#[inline]
pub(crate) fn check() {
    BUDGET.with(|cell| {
        let Some(mut budget) = cell.get() else {
            return;
        };
        budget.ticks = budget.ticks.wrapping_add(1);
        if budget.ticks % (64 * 1024) == 0 && budget.resident_at_start.is_none() {
            budget.resident_at_start = resident_bytes();
        }
        cell.set(Some(budget));
        let used = budget.stack_base.saturating_sub(stack_address());
        if used > budget.limits.stack_bytes {
            exceed(Exceeded::Depth(budget.limits.stack_bytes));
        }
        if budget.ticks % 1024 != 0 {
            return;
        }
        if Instant::now() > budget.deadline {
            exceed(Exceeded::Time(budget.limits.time));
        }
        if budget.ticks % (64 * 1024) == 0
            && let Some(start) = budget.resident_at_start
            && let Some(now) = resident_bytes()
            && now.saturating_sub(start) > budget.limits.memory_bytes
        {
            exceed(Exceeded::Memory(budget.limits.memory_bytes));
        }
    });
}

/// Runs one jq evaluation, turning an exhausted budget or a panic inside the engine into an
/// error.
pub(crate) fn guarded<T>(evaluation: impl FnOnce() -> T) -> Result<T, Exceeded> {
    quiet_budget_panics();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(evaluation)).map_err(|payload| {
        match payload.downcast::<Exceeded>() {
            Ok(why) => *why,
            Err(payload) => Exceeded::Panic(
                payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "a panic without a message".to_owned()),
            ),
        }
    })
}

/// A budget stop is not a crash: the panic hook stays silent for it (other panics are still
/// printed, then caught).
fn quiet_budget_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<Exceeded>().is_none() {
                previous(info);
            }
        }));
    });
}

/// How deeply arrays and objects nest in the JSON `text` (strings skipped), without recursion;
/// stops counting past `limit`.
pub fn nesting_exceeds(text: &[u8], limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in text {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        assert!(!nesting_exceeds(br#"{"a": [[1]], "s": "[[[[["}"#, 3));
        assert!(nesting_exceeds(br#"{"a": [[[1]]]}"#, 3));
        assert!(!nesting_exceeds(br#"["\"[[[[", {"b": "\\"}]"#, 2));
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        assert!(nesting_exceeds(deep.as_bytes(), 1000));
        assert!(!nesting_exceeds(deep.as_bytes(), 5000));
    }

    #[test]
    fn a_budget_stop_unwinds_to_the_guard_and_is_told_apart_from_a_bug() {
        let limits = Limits {
            time: Duration::ZERO,
            ..Limits::default()
        };
        let stopped = for_item(&limits, || {
            guarded(|| {
                loop {
                    check();
                }
            })
        });
        assert_eq!(stopped, Err(Exceeded::Time(Duration::ZERO)));
        let bug = guarded::<()>(|| panic!("boom"));
        assert_eq!(bug, Err(Exceeded::Panic("boom".to_owned())));
        // Outside an item, checks cost nothing and stop nothing.
        check();
    }
}
