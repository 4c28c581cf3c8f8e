//! Device selection for candle. The only place that knows about GPU features.
use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where models run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceConfig {
    /// A GPU when this build has GPU support and one is present, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// NVIDIA GPU number N (needs the `cuda` feature).
    Cuda(usize),
    /// Apple GPU number N (needs the `metal` feature).
    Metal(usize),
}

impl std::str::FromStr for DeviceConfig {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.to_ascii_lowercase();
        let ordinal = |rest: &str| -> Result<usize> {
            if rest.is_empty() {
                Ok(0)
            } else {
                rest.trim_start_matches(':')
                    .parse()
                    .map_err(|_| Error::invalid(format!("bad device ordinal in {s:?}")))
            }
        };
        match s.as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            _ if s.starts_with("cuda") => Ok(Self::Cuda(ordinal(&s[4..])?)),
            _ if s.starts_with("metal") => Ok(Self::Metal(ordinal(&s[5..])?)),
            _ => Err(Error::invalid(format!(
                "unknown device {s:?} (expected auto, cpu, cuda[:N] or metal[:N])"
            ))),
        }
    }
}

/// The candle device for a configuration.
pub fn select(config: DeviceConfig) -> Result<Device> {
    match config {
        DeviceConfig::Cpu => Ok(Device::Cpu),
        DeviceConfig::Auto => Ok(auto()),
        DeviceConfig::Cuda(n) => cuda(n),
        DeviceConfig::Metal(n) => metal(n),
    }
}

#[cfg(feature = "cuda")]
fn auto() -> Device {
    if candle_core::utils::cuda_is_available() {
        Device::new_cuda(0).unwrap_or(Device::Cpu)
    } else {
        Device::Cpu
    }
}

#[cfg(all(feature = "metal", not(feature = "cuda")))]
fn auto() -> Device {
    if candle_core::utils::metal_is_available() {
        Device::new_metal(0).unwrap_or(Device::Cpu)
    } else {
        Device::Cpu
    }
}

#[cfg(not(any(feature = "cuda", feature = "metal")))]
fn auto() -> Device {
    Device::Cpu
}

#[cfg(feature = "cuda")]
fn cuda(n: usize) -> Result<Device> {
    Ok(Device::new_cuda(n)?)
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: usize) -> Result<Device> {
    Err(Error::invalid(
        "this build has no CUDA support (rebuild with `--features cuda`)",
    ))
}

#[cfg(feature = "metal")]
fn metal(n: usize) -> Result<Device> {
    Ok(Device::new_metal(n)?)
}

#[cfg(not(feature = "metal"))]
fn metal(_: usize) -> Result<Device> {
    Err(Error::invalid(
        "this build has no Metal support (rebuild with `--features metal`)",
    ))
}

/// A short name of a device for logs and reports.
pub fn describe(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse::<DeviceConfig>().unwrap(), DeviceConfig::Cpu);
        assert_eq!(
            "CUDA:1".parse::<DeviceConfig>().unwrap(),
            DeviceConfig::Cuda(1)
        );
        assert_eq!(
            "cuda".parse::<DeviceConfig>().unwrap(),
            DeviceConfig::Cuda(0)
        );
        assert!("tpu".parse::<DeviceConfig>().is_err());
        assert!(select(DeviceConfig::Auto).is_ok());
    }
}
