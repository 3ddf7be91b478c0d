//! The run's maps as typed handles, taken out of the loaded object once,
//! before its programs are verified: after start-up nothing finds a map by
//! name, so a misnamed or mistyped map fails the run's start (and the unit
//! test that reads the object), never a `throttle set`.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{
        Array, Map, MapData, MapError, PerCpuArray,
        lpm_trie::{Key, LpmTrie},
    },
};
use nix::time::{ClockId, clock_gettime};
use throttle_common::{
    Counters, Direction, Limit, MAP_CLOCK, MAP_COUNTERS, MAP_EXCLUDED, MAP_LIMITS, MAP_NETWORKS,
    MAP_SCOPE, MAP_TUNING, PerDirection, networks::SCOPE_EVERYTHING, policer::primed_tat,
    units::Rate,
};

use crate::limits::{Limits, Scope};

/// What the control socket needs of a run's maps: the counters, and a way
/// to put limits in force. A trait so the server's tests can record what
/// it asks without a kernel.
pub(crate) trait Maps: Send {
    fn counters(&self) -> Result<PerDirection<Counters>>;
    fn excluded(&self) -> Result<PerDirection<Counters>>;
    fn set_limits(&mut self, limits: &Limits) -> Result<()>;
    fn set_scope(&mut self, scope: &Scope) -> Result<()>;
}

/// The maps userspace reads or writes; the programs' own per-socket and
/// per-flow state stays in the object.
pub(crate) struct RunMaps {
    limits: Array<MapData, Limit>,
    clock: Array<MapData, u64>,
    tuning: Array<MapData, u32>,
    scope: Array<MapData, u32>,
    networks: LpmTrie<MapData, [u8; 16], u32>,
    counters: PerCpuArray<MapData, Counters>,
    excluded: PerCpuArray<MapData, Counters>,
}

impl RunMaps {
    /// Takes the handles out of a freshly loaded object. The programs keep
    /// the maps they were relocated against; the handles share them by fd.
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<RunMaps> {
        Ok(RunMaps {
            limits: take(ebpf, MAP_LIMITS)?,
            clock: take(ebpf, MAP_CLOCK)?,
            tuning: take(ebpf, MAP_TUNING)?,
            scope: take(ebpf, MAP_SCOPE)?,
            networks: take(ebpf, MAP_NETWORKS)?,
            counters: take(ebpf, MAP_COUNTERS)?,
            excluded: take(ebpf, MAP_EXCLUDED)?,
        })
    }

    /// Starts each direction's bucket with its starting credit (see
    /// [`Limits::starting_credit`]) instead of the full bucket a fresh
    /// clock of 0 gives. Only before the programs are attached: the clock is
    /// the kernel's to change once packets flow.
    pub(super) fn prime_clocks(&mut self, limits: &Limits) -> Result<()> {
        // The programs' clock, bpf_ktime_get_ns, is CLOCK_MONOTONIC.
        let now = clock_gettime(ClockId::CLOCK_MONOTONIC).context("reading the monotonic clock")?;
        let now = u64::try_from(Duration::from(now).as_nanos()).unwrap_or(u64::MAX);
        for direction in Direction::ALL {
            let tat = primed_tat(
                now,
                &limits.map_value(direction),
                limits.starting_credit(direction),
            );
            self.clock
                .set(direction.key(), tat, 0)
                .with_context(|| format!("starting the {} bucket", direction.name()))?;
        }
        Ok(())
    }

    fn write_scope(&mut self, value: u32) -> Result<()> {
        self.scope
            .set(0, value, 0)
            .context("writing the run's scope")
    }
}

impl Maps for RunMaps {
    /// The counters of the limited traffic, both directions, summed over CPUs.
    fn counters(&self) -> Result<PerDirection<Counters>> {
        totals(&self.counters)
    }

    /// The counters of the traffic `--exclude` and `--only` leave unlimited.
    fn excluded(&self) -> Result<PerDirection<Counters>> {
        totals(&self.excluded)
    }

    /// Puts `limits` in force: the programs read them on the next packet
    /// (the socket hooks on the next segment a socket sends).
    fn set_limits(&mut self, limits: &Limits) -> Result<()> {
        // Turned on with the first limit and never off, so a run that goes
        // back to unlimited still has its sockets' clamps undone.
        if limits
            .rates
            .each()
            .iter()
            .any(|(_, rate)| **rate != Rate::Unlimited)
        {
            self.tuning
                .set(0, 1, 0)
                .context("turning the socket hooks on")?;
        }
        for direction in Direction::ALL {
            self.limits
                .set(direction.key(), limits.map_value(direction), 0)
                .with_context(|| format!("writing the {} limit", direction.name()))?;
        }
        Ok(())
    }

    /// Puts `scope`'s lists in force. While the trie is rewritten the run
    /// limits all its traffic: for that moment excluded traffic is limited
    /// too, and limited traffic is never let through.
    fn set_scope(&mut self, scope: &Scope) -> Result<()> {
        let entries = scope.entries().map_err(|e| anyhow!(e))?;
        self.write_scope(SCOPE_EVERYTHING)?;
        let old: Vec<Key<[u8; 16]>> = self.networks.keys().collect::<Result<_, _>>()?;
        for key in &old {
            self.networks
                .remove(key)
                .context("clearing the run's networks")?;
        }
        for (network, kind) in &entries {
            self.networks
                .insert(&Key::new(network.prefix_len, network.addr), kind, 0)
                .with_context(|| format!("adding {network} to the run's networks"))?;
        }
        self.write_scope(scope.map_value())
    }
}

/// The object's map `name` as the handle type `T`.
fn take<T: TryFrom<Map, Error = MapError>>(ebpf: &mut Ebpf, name: &str) -> Result<T> {
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("the eBPF object has no {name} map"))?;
    T::try_from(map).with_context(|| format!("the eBPF object's {name} map"))
}

fn totals(map: &PerCpuArray<MapData, Counters>) -> Result<PerDirection<Counters>> {
    let mut totals = PerDirection::<Counters>::default();
    for direction in Direction::ALL {
        for cpu in map.get(&direction.key(), 0)?.iter() {
            totals[direction].accumulate(cpu);
        }
    }
    Ok(totals)
}
