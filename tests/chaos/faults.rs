//! The faults, and healing them.
//!
//! One task drives the world: every tick it brings each process towards
//! what is wanted of it ([`crate::procs::Managed::reconcile`]: restart
//! what should run, notice what died), brings the database and the link
//! back when their downtime is over, and, when the next fault is due,
//! injects one. The first faults are one of each kind in a random order
//! (so that even a short run has them all), then kinds are drawn with
//! [`WEIGHTS`]. Every delay is drawn from the seeded generator: the
//! schedule replays with the seed, the interleaving with the clients does
//! not. The sleeps here are the pacing of the faults; nothing waits for
//! anything by sleeping.

use crate::suite::World;
use crate::Config;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL a coordinator process, start it again later.
    KillCoordinator,
    /// SIGKILL a participant process, start it again later.
    KillParticipant,
    /// `pg_ctl stop -m immediate` the coordinators' database, start it again later.
    CrashDatabase,
    /// Cut the link to the namespace's participants, heal it later.
    Partition,
}

/// Relative weights of the kinds after the first round.
const WEIGHTS: [(Fault, u32); 4] =
    [(Fault::KillCoordinator, 4), (Fault::KillParticipant, 3), (Fault::CrashDatabase, 1), (Fault::Partition, 2)];

/// How long a killed process stays down.
const PROCESS_DOWN_MS: (u64, u64) = (100, 1_500);
/// How long the database stays down.
const DATABASE_DOWN_MS: (u64, u64) = (300, 2_500);
/// How often a long run says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);
/// How long a partition lasts.
const PARTITION_MS: (u64, u64) = (500, 4_000);

/// What was injected.
#[derive(Debug, Default, Clone)]
pub struct FaultStats {
    /// Coordinator processes SIGKILLed.
    pub coordinator_kills: u32,
    /// Participant processes SIGKILLed.
    pub participant_kills: u32,
    /// Immediate stops of the coordinators' database.
    pub database_crashes: u32,
    /// Bytes of WAL not yet written at each immediate stop (`None`: not read).
    pub unwritten_wal: Vec<Option<i64>>,
    /// Link cuts.
    pub partitions: u32,
    /// How long faults were injected.
    pub duration: Duration,
}

fn draw(rng: &mut StdRng, (lo, hi): (u64, u64)) -> Duration {
    Duration::from_millis(rng.gen_range(lo..=hi))
}

fn pause(rng: &mut StdRng, cfg: &Config) -> Duration {
    let (lo, hi) = cfg.fault_pause;
    draw(rng, (lo.as_millis() as u64, hi.as_millis() as u64))
}

/// Injects faults until the run's duration is over or `begun` reaches its transfer count.
pub async fn inject(world: &mut World, cfg: &Config, rng: &mut StdRng, begun: &AtomicU64) -> FaultStats {
    let start = Instant::now();
    let http = reqwest::Client::new();
    let kinds: Vec<Fault> =
        WEIGHTS.iter().map(|(f, _)| *f).filter(|f| *f != Fault::Partition || world.netns.is_some()).collect();
    let mut first = kinds.clone();
    first.shuffle(rng);
    let mut queue: VecDeque<Fault> = first.into();
    let mut stats = FaultStats::default();
    let mut next = start + pause(rng, cfg);
    let (mut database_at, mut link_at): (Option<Instant>, Option<Instant>) = (None, None);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut progress = start + PROGRESS_EVERY;
    loop {
        tick.tick().await;
        let now = Instant::now();
        let begun = begun.load(Ordering::Relaxed);
        if now - start >= cfg.duration || cfg.transfers.is_some_and(|n| begun >= n) {
            break;
        }
        if now >= progress {
            progress += PROGRESS_EVERY;
            println!(
                "chaos: {:>5.0?}: {begun} transfers begun; killed {} coordinators, {} participants; {} database \
                 crashes; {} partitions",
                now - start,
                stats.coordinator_kills,
                stats.participant_kills,
                stats.database_crashes,
                stats.partitions
            );
        }
        world.reconcile(&http).await;
        if database_at.is_some_and(|t| now >= t) {
            match world.cluster.start().await {
                Ok(()) => database_at = None,
                Err(e) => {
                    eprintln!("chaos: restarting the database: {e:#}");
                    database_at = Some(now + Duration::from_millis(500));
                }
            }
        }
        if link_at.is_some_and(|t| now >= t) {
            if let Some(ns) = &mut world.netns {
                match ns.heal().await {
                    Ok(()) => link_at = None,
                    Err(e) => eprintln!("chaos: healing the link: {e:#}"),
                }
            }
        }
        if now < next {
            continue;
        }
        next = now + pause(rng, cfg);
        let fault = queue.pop_front().unwrap_or_else(|| {
            let total: u32 = WEIGHTS.iter().filter(|(f, _)| kinds.contains(f)).map(|(_, w)| w).sum();
            let mut pick = rng.gen_range(0..total);
            WEIGHTS
                .iter()
                .filter(|(f, _)| kinds.contains(f))
                .find(|(_, w)| {
                    if pick < *w {
                        true
                    } else {
                        pick -= w;
                        false
                    }
                })
                .map(|(f, _)| *f)
                .unwrap_or(Fault::KillCoordinator)
        });
        match fault {
            Fault::KillCoordinator | Fault::KillParticipant => {
                let procs =
                    if fault == Fault::KillCoordinator { &mut world.coordinators } else { &mut world.participants };
                let running: Vec<usize> = (0..procs.len()).filter(|&i| procs[i].is_running()).collect();
                let Some(&i) = running.choose(rng) else { continue };
                let down = draw(rng, PROCESS_DOWN_MS);
                if procs[i].kill().await {
                    procs[i].start_at(Instant::now() + down);
                    match fault {
                        Fault::KillCoordinator => stats.coordinator_kills += 1,
                        _ => stats.participant_kills += 1,
                    }
                }
            }
            Fault::CrashDatabase if world.cluster.running() && database_at.is_none() => {
                let down = draw(rng, DATABASE_DOWN_MS);
                stats.unwritten_wal.push(world.cluster.unwritten_wal().await);
                if let Err(e) = world.cluster.crash().await {
                    eprintln!("chaos: stopping the database: {e:#}");
                }
                stats.database_crashes += 1;
                database_at = Some(Instant::now() + down);
            }
            Fault::Partition => {
                let cut = draw(rng, PARTITION_MS);
                if let Some(ns) = world.netns.as_mut().filter(|ns| !ns.is_cut()) {
                    match ns.cut().await {
                        Ok(()) => {
                            stats.partitions += 1;
                            link_at = Some(Instant::now() + cut);
                        }
                        Err(e) => eprintln!("chaos: cutting the link: {e:#}"),
                    }
                }
            }
            // The database is down already: this draw injects nothing.
            Fault::CrashDatabase => {}
        }
    }
    stats.duration = start.elapsed();
    stats
}

/// Heals everything: the database up, the link up, every process wanted
/// up at once; returns when every process answers ready, or fails after `within`.
pub async fn heal(world: &mut World, within: Duration) -> anyhow::Result<()> {
    if !world.cluster.running() {
        world.cluster.start().await?;
    }
    if let Some(ns) = world.netns.as_mut().filter(|ns| ns.is_cut()) {
        ns.heal().await?;
    }
    let now = Instant::now();
    for p in world.processes_mut() {
        p.start_at(now);
    }
    world.ready(within).await
}
