//! What the scheduler costs per block: one downloader, four peers holding a 1 GiB file in
//! 10 chunks, every request answered at once, for three block sizes. Prints figures.
//!
//! `cargo run --release -p scheduler --example perblock`

use std::collections::VecDeque;
use std::time::Instant;

use scheduler::{Action, Config, Layout, Scheduler};

fn main() {
    for block_len in [256u64 << 10, 128 << 10, 64 << 10] {
        let size = 1u64 << 30;
        let layout = Layout {
            size,
            chunk_size: size.div_ceil(10),
            block_len,
        };
        let mut s: Scheduler<u8> = Scheduler::new(layout, [], 1, Config::default());
        for p in 0..4u8 {
            s.add_peer(p, 0..10, 0);
        }
        s.start(0);
        let start = Instant::now();
        let (mut now, mut blocks) = (0, 0u64);
        let mut in_flight = VecDeque::new();
        'run: loop {
            while let Some(a) = s.poll_action() {
                match a {
                    Action::Connect { peer } => {
                        s.connected(&peer, 0..10, [], now);
                        s.unchoked(&peer, now);
                    }
                    Action::Request { peer, chunk, block } => {
                        in_flight.push_back((peer, chunk, block))
                    }
                    Action::Verify { chunk } => s.verified(chunk, true, now),
                    Action::Finished => break 'run,
                    _ => {}
                }
            }
            let Some((p, c, b)) = in_flight.pop_front() else {
                break;
            };
            now += 1;
            s.block(&p, c, b, now);
            blocks += 1;
        }
        let took = start.elapsed();
        println!(
            "{:>3} KiB blocks: {blocks} blocks in {:.1} ms, {:.1} us per block",
            block_len >> 10,
            took.as_secs_f64() * 1e3,
            took.as_secs_f64() * 1e6 / blocks as f64
        );
    }
}
