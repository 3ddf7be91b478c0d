//! What a benchmark run measures: the matrix of cases, and how long and how
//! often each runs.

use super::report::{Case, Dir, Link, Traffic};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;

/// How long each run lasts and how often it repeats.
pub struct Plan {
    pub cases: Vec<Case>,
    pub reps: usize,
    /// Seconds measured, after `warmup` seconds left out of every figure
    /// except the waste (the bucket's initial burst is not the steady state).
    pub secs: u32,
    pub warmup: u32,
    pub overhead_runs: usize,
    pub plot: bool,
}

pub(super) fn full_plan() -> Plan {
    let mut cases = Vec::new();
    for limit in [64 * KIB, MIB, 16 * MIB, 128 * MIB] {
        for dir in [Dir::Down, Dir::Up] {
            for flows in [1, 8] {
                cases.push(Case::new(Link::Veth, Traffic::Tcp { flows }, dir, limit));
            }
        }
        cases.push(Case::new(
            Link::Veth,
            Traffic::Curl { whole_file: false },
            Dir::Down,
            limit,
        ));
        for dir in [Dir::Down, Dir::Up] {
            cases.push(Case::new(Link::Veth, Traffic::Udp, dir, limit));
        }
    }
    // What users of fast links throttle big parallel transfers to.
    for limit in [512 * MIB, 1024 * MIB] {
        for dir in [Dir::Down, Dir::Up] {
            for flows in [1, 8] {
                cases.push(Case::new(Link::Veth, Traffic::Tcp { flows }, dir, limit));
            }
        }
    }
    for limit in [MIB, 16 * MIB, 128 * MIB] {
        for dir in [Dir::Down, Dir::Up] {
            cases.push(Case::new(
                Link::Loopback,
                Traffic::Tcp { flows: 1 },
                dir,
                limit,
            ));
        }
    }
    Plan {
        cases,
        reps: 3,
        secs: 8,
        warmup: 1,
        // Throughput over veth varies by ±10% from run to run on two CPUs;
        // more interleaved runs keep the median ratio meaningful.
        overhead_runs: 7,
        plot: true,
    }
}

pub(super) fn quick_plan() -> Plan {
    Plan {
        cases: [Dir::Down, Dir::Up]
            .map(|dir| Case::new(Link::Veth, Traffic::Tcp { flows: 1 }, dir, MIB))
            .to_vec(),
        reps: 1,
        secs: 3,
        warmup: 1,
        overhead_runs: 1,
        plot: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_cover_the_matrix() {
        let full = full_plan();
        assert_eq!(full.cases.len(), 4 * 7 + 2 * 4 + 3 * 2);
        assert!(full.reps >= 3 && full.secs >= 8);
        assert_eq!(quick_plan().cases.len(), 2);
    }
}
