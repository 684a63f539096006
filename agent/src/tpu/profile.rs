//! How a TPU chip's draw follows its TensorCore duty cycle, per generation.
//!
//! The model is linear between the chip's draw idle (0 % duty cycle) and busy (100 %), the
//! same shape as the GPUs' draw against utilisation ([`crate::curve::LinearFit`]). Its two
//! figures come from [`PUBLISHED_PROFILES`], where Google publishes them, or from the operator
//! (`--tpu-idle-watts`, `--tpu-busy-watts`), who should measure them on the hardware in use.
//! Where Google publishes nothing, the operator must give them: no figure is invented here.

use std::fmt;

use thiserror::Error;

/// The TPU generations the agent knows. All four expose one runtime device per chip (v4 in
/// its default megacore mode), so the runtime's device ids are chip ids and the per-chip
/// figures below apply to each device. v2, v3 and v7x expose two devices per chip and are not
/// supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TpuGeneration {
    V4,
    V5e,
    V5p,
    V6e,
}

impl TpuGeneration {
    /// Every generation, in order.
    pub const ALL: [Self; 4] = [Self::V4, Self::V5e, Self::V5p, Self::V6e];

    /// The name Google Cloud uses ("v5e"); also the device model the agent registers, prefixed
    /// with "TPU " ("TPU v5e"), so curves are kept per generation.
    pub fn name(self) -> &'static str {
        match self {
            Self::V4 => "v4",
            Self::V5e => "v5e",
            Self::V5p => "v5p",
            Self::V6e => "v6e",
        }
    }

    /// The published idle and busy draw of one chip, where Google publishes one.
    pub fn published_profile(self) -> Option<&'static PublishedProfile> {
        PUBLISHED_PROFILES
            .iter()
            .find(|(g, _)| *g == self)
            .map(|(_, p)| p)
    }
}

impl fmt::Display for TpuGeneration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A generation's per-chip draw as a public source gives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PublishedProfile {
    /// Draw at a 0 % duty cycle.
    pub idle_watts: f64,
    /// Draw at a 100 % duty cycle.
    pub busy_watts: f64,
    /// Where the figures come from, and how they were read.
    pub source: &'static str,
}

/// Per-chip draw that Google publishes, by generation.
///
/// Only v4 has one: its Cloud TPU page lists "Measured min/mean/max power 90/170/192 W" per
/// chip. The model takes the measured minimum as the idle draw and the measured maximum as the
/// draw at a 100 % duty cycle; that mapping is this model's assumption, not Google's statement.
///
/// Google's pages for v5e (<https://cloud.google.com/tpu/docs/v5e>), v5p
/// (<https://cloud.google.com/tpu/docs/v5p>) and v6e (<https://cloud.google.com/tpu/docs/v6e>)
/// give peak compute, HBM and interconnect figures but no power, so those generations are
/// absent here and the agent requires `--tpu-idle-watts` and `--tpu-busy-watts` for them.
pub const PUBLISHED_PROFILES: &[(TpuGeneration, PublishedProfile)] = &[(
    TpuGeneration::V4,
    PublishedProfile {
        idle_watts: 90.0,
        busy_watts: 192.0,
        source: "Google Cloud, \"TPU v4\" (https://cloud.google.com/tpu/docs/v4), key \
                 specifications: measured min/mean/max power 90/170/192 W per chip",
    },
)];

/// A TensorCore duty cycle: the share of a period the chip's TensorCores were busy, checked to
/// be a finite percentage in 0–100 when it is made.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct DutyCycle(f64);

impl DutyCycle {
    /// `None` unless `percent` is finite and within 0–100.
    pub fn from_percent(percent: f64) -> Option<Self> {
        (percent.is_finite() && (0.0..=100.0).contains(&percent)).then_some(Self(percent))
    }

    pub fn percent(self) -> f64 {
        self.0
    }

    fn fraction(self) -> f64 {
        self.0 / 100.0
    }
}

/// How one generation's draw follows its duty cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct TpuPowerModel {
    pub generation: TpuGeneration,
    /// Draw of one chip at a 0 % duty cycle.
    pub idle_watts: f64,
    /// Draw of one chip at a 100 % duty cycle.
    pub busy_watts: f64,
    /// Where the figures come from: the published source, or the operator's configuration.
    pub origin: String,
}

/// Why no power model could be made.
#[derive(Debug, Error, PartialEq)]
pub enum ProfileError {
    #[error(
        "TPU {generation}: Google publishes no per-chip power for this generation, so the agent \
         cannot estimate it; give the chip's draw at 0 % and 100 % duty cycle (measured on \
         your hardware) with --tpu-idle-watts and --tpu-busy-watts{missing}"
    )]
    Unpublished {
        generation: TpuGeneration,
        /// Which of the two is missing, when one was given.
        missing: String,
    },
    #[error(
        "TPU {generation}: power model {idle_watts} W idle, {busy_watts} W busy: need \
         0 ≤ idle ≤ busy, both finite"
    )]
    Inconsistent {
        generation: TpuGeneration,
        idle_watts: f64,
        busy_watts: f64,
    },
}

impl TpuPowerModel {
    /// The model for `generation`: the operator's figures where given, the published ones for
    /// the rest; an error where neither exists or the result is inconsistent.
    pub fn for_generation(
        generation: TpuGeneration,
        idle_watts: Option<f64>,
        busy_watts: Option<f64>,
    ) -> Result<Self, ProfileError> {
        let published = generation.published_profile();
        let (idle, busy) = match (idle_watts, busy_watts, published) {
            (Some(i), Some(b), _) => (i, b),
            (i, b, Some(p)) => (i.unwrap_or(p.idle_watts), b.unwrap_or(p.busy_watts)),
            (i, b, None) => {
                let missing = match (i, b) {
                    (Some(_), None) => " (--tpu-busy-watts is missing)",
                    (None, Some(_)) => " (--tpu-idle-watts is missing)",
                    _ => "",
                };
                return Err(ProfileError::Unpublished {
                    generation,
                    missing: missing.into(),
                });
            }
        };
        if !(idle.is_finite() && busy.is_finite() && idle >= 0.0 && busy >= idle) {
            return Err(ProfileError::Inconsistent {
                generation,
                idle_watts: idle,
                busy_watts: busy,
            });
        }
        let origin = match (idle_watts, busy_watts, published) {
            (None, None, Some(p)) => p.source.to_owned(),
            (Some(_), Some(_), _) | (_, _, None) => "operator configuration".to_owned(),
            (_, _, Some(p)) => format!("operator configuration and {}", p.source),
        };
        Ok(Self {
            generation,
            idle_watts: idle,
            busy_watts: busy,
            origin,
        })
    }

    /// The device model the agent registers chips under.
    pub fn device_model(&self) -> String {
        format!("TPU {}", self.generation)
    }

    /// The estimated draw of one chip at `duty`.
    pub fn watts_at(&self, duty: DutyCycle) -> f64 {
        self.idle_watts + duty.fraction() * (self.busy_watts - self.idle_watts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_uses_the_published_figures_and_the_line_between_them() -> Result<(), ProfileError> {
        let m = TpuPowerModel::for_generation(TpuGeneration::V4, None, None)?;
        assert_eq!((m.idle_watts, m.busy_watts), (90.0, 192.0));
        assert!(m.origin.contains("cloud.google.com/tpu/docs/v4"));
        let at = |p| DutyCycle::from_percent(p).map(|d| m.watts_at(d));
        assert_eq!(at(0.0), Some(90.0));
        assert_eq!(at(50.0), Some(141.0));
        assert_eq!(at(100.0), Some(192.0));
        // One figure of the operator's replaces only that figure.
        let m = TpuPowerModel::for_generation(TpuGeneration::V4, Some(80.0), None)?;
        assert_eq!((m.idle_watts, m.busy_watts), (80.0, 192.0));
        assert!(m.origin.starts_with("operator configuration and"));
        Ok(())
    }

    #[test]
    fn unpublished_generations_require_both_figures() {
        for g in [TpuGeneration::V5e, TpuGeneration::V5p, TpuGeneration::V6e] {
            assert_eq!(g.published_profile(), None);
            let e = TpuPowerModel::for_generation(g, None, None).err();
            assert!(
                matches!(e, Some(ProfileError::Unpublished { .. })),
                "{g}: {e:?}"
            );
            let e = TpuPowerModel::for_generation(g, Some(60.0), None)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("--tpu-busy-watts is missing"), "{e}");
            assert!(TpuPowerModel::for_generation(g, Some(60.0), Some(200.0)).is_ok());
        }
    }

    #[test]
    fn inconsistent_figures_and_bad_duty_cycles_are_refused() {
        for (idle, busy) in [
            (100.0, 50.0),
            (-1.0, 50.0),
            (f64::NAN, 50.0),
            (0.0, f64::INFINITY),
        ] {
            let r = TpuPowerModel::for_generation(TpuGeneration::V6e, Some(idle), Some(busy));
            assert!(
                matches!(r, Err(ProfileError::Inconsistent { .. })),
                "{idle}/{busy}"
            );
        }
        for p in [-0.1, 100.1, f64::NAN, f64::INFINITY] {
            assert_eq!(DutyCycle::from_percent(p), None, "{p}");
        }
    }
}
