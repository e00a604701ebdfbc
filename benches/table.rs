//! `cargo bench --bench table [-- --sessions N]`: where a session's memory
//! and a mass failover's apply time go in the table itself, without HTTP,
//! Raft or sled: the replicated state machine every node holds.
//!
//! - memory: bytes and allocations per session of the table (rows, the
//!   owner index), counted by a counting global allocator (requested sizes;
//!   the allocator's own overhead, about 8-16 bytes an allocation, comes on
//!   top), for sessions whose state is `{"v": "<100 bytes>"}` as in
//!   `minos bench throughput`;
//! - mass failover: applying the moves of every session of one node of
//!   three, as the leader writes them (`Relocate` commands of 2,000 moves,
//!   three to an entry), per move and per entry;
//! - snapshot: copying the table and encoding it (bincode), as the state
//!   machine does off the write path.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use chrono::Utc;
use clap::Parser;
use minos::model::{Command, Move, MoveReason, Proposal, SessionId, SessionKind, StateJson};
use minos::state::ClusterState;

struct Counting;

static BYTES: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only the
// counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        ALLOCATIONS.fetch_sub(1, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[derive(Parser)]
#[command(name = "table-bench")]
struct Cli {
    /// Sessions in the table.
    #[arg(long, default_value_t = 300_000)]
    sessions: usize,
    /// Accepted for `cargo bench` (which passes it); ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Moves per command and commands per entry, as the leader writes them.
const MOVES_PER_COMMAND: usize = 2000;
const COMMANDS_PER_ENTRY: usize = 3;

fn counters() -> (isize, isize) {
    (
        BYTES.load(Ordering::Relaxed),
        ALLOCATIONS.load(Ordering::Relaxed),
    )
}

fn entry(commands: Vec<Command>) -> Proposal {
    Proposal::V2 {
        at: Utc::now(),
        commands,
        history_keep: minos::model::HISTORY_KEEP,
    }
}

fn load(state: &mut ClusterState, sessions: usize) {
    let value = "x".repeat(100);
    for start in (0..sessions).step_by(1000) {
        let commands = (start..(start + 1000).min(sessions))
            .map(|n| Command::CreateSession {
                id: SessionId::new(format!("bench-{n:07}")).expect("id"),
                kind: SessionKind::new("kv").expect("kind"),
                state: StateJson::from_value(&serde_json::json!({ "v": value })),
                owner: Some(1 + (n as u64) % 3),
            })
            .collect();
        state.apply(&entry(commands));
    }
}

fn main() {
    let cli = Cli::parse();
    let n = cli.sessions.max(3);
    let mut state = ClusterState::default();
    let nodes = (1..=3)
        .map(|id| Command::AddNode {
            id,
            addr: format!("127.0.0.1:{}", 7100 + id),
        })
        .collect();
    state.apply(&entry(nodes));
    let (bytes, allocations) = counters();
    load(&mut state, n);
    let (bytes_after, allocations_after) = counters();
    println!(
        "table with {n} sessions: {:.0} bytes and {:.2} allocations per session \
         (a row is {} bytes inline; the state is {} bytes of JSON)",
        (bytes_after - bytes) as f64 / n as f64,
        (allocations_after - allocations) as f64 / n as f64,
        std::mem::size_of::<minos::model::Session>(),
        serde_json::json!({ "v": "x".repeat(100) })
            .to_string()
            .len(),
    );

    // The leader's plan once node 3 is Down: every session of node 3 to
    // its placement choice among the survivors.
    state.apply(&entry(vec![Command::NodeDown { id: 3 }]));
    let started = Instant::now();
    let moves: Vec<Move> = minos::placement::repair(&state);
    let planned = started.elapsed();
    println!(
        "mass failover: planned {} moves in {} ms ({:.2} us a move)",
        moves.len(),
        planned.as_millis(),
        planned.as_secs_f64() * 1e6 / moves.len().max(1) as f64,
    );
    let entries: Vec<Proposal> = moves
        .chunks(MOVES_PER_COMMAND * COMMANDS_PER_ENTRY)
        .map(|chunk| {
            let commands = chunk
                .chunks(MOVES_PER_COMMAND)
                .map(|moves| Command::Relocate {
                    moves: moves.to_vec(),
                    reason: MoveReason::NodeDown,
                    detected: None,
                })
                .collect();
            entry(commands)
        })
        .collect();
    let started = Instant::now();
    for proposal in &entries {
        state.apply(proposal);
    }
    let took = started.elapsed();
    println!(
        "mass failover: {} moves in {} entries applied in {} ms ({:.2} us a move, {:.1} ms an entry)",
        moves.len(),
        entries.len(),
        took.as_millis(),
        took.as_secs_f64() * 1e6 / moves.len().max(1) as f64,
        took.as_secs_f64() * 1e3 / entries.len().max(1) as f64,
    );

    let started = Instant::now();
    let copy = state.copy();
    let copied = started.elapsed();
    let encoded = bincode::serialize(&copy).expect("encode");
    println!(
        "snapshot: copied in {} us, encoded in {} ms, {:.0} bytes per session",
        copied.as_micros(),
        started.elapsed().as_millis(),
        encoded.len() as f64 / n as f64,
    );
}
