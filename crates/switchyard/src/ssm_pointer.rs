//! `pointer watch --ssm-parameter NAME`: follows the active region through the SSM parameter
//! the `ssm_parameter` step writes, for hosts that cannot reach the controller. Same env file
//! and reload command as the controller-fed watcher, and the same rule: never a generation
//! older than the one applied (the generation comes from the parameter's description).

use std::path::PathBuf;
use std::time::Duration;

use controller::pointer::{GENERATION_STEP_MAX, PointerValue, Received, applied_generation, judge};
use providers::ssm::{ParameterReader, PointerReading};

/// Shortest and longest `--poll-ms`: SSM's GetParameter allows 40 calls a second per account
/// by default, shared by every host that polls.
pub const POLL_MS_MIN: u64 = 500;
pub const POLL_MS_MAX: u64 = 600_000;

pub(crate) struct SsmWatch {
    pub reader: ParameterReader,
    pub env_file: PathBuf,
    pub exec: Option<String>,
    pub poll_ms: u64,
}

/// What to do with one reading, given the applied generation.
fn next(applied: u64, reading: &PointerReading) -> Option<(String, u64)> {
    let written = reading.written.as_ref()?;
    let value = PointerValue {
        region: Some(written.region.clone()),
        generation: written.generation,
    };
    match judge(applied, &value) {
        Received::Apply => Some((written.region.clone(), written.generation)),
        Received::Ignore => None,
        Received::NotARegion => {
            tracing::warn!(
                generation = written.generation,
                region = %written.region,
                "refused a parameter whose region is not a region name; nothing changed"
            );
            None
        }
        Received::TooFarAhead => {
            tracing::warn!(
                generation = written.generation,
                applied,
                "refused a generation more than {GENERATION_STEP_MAX} above the applied one; nothing changed"
            );
            None
        }
    }
}

pub(crate) async fn watch(options: SsmWatch, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let mut applied = applied_generation(&options.env_file);
    let mut unwritten_warned = false;
    tokio::pin!(shutdown);
    loop {
        let reading = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            reading = options.reader.read() => reading,
        };
        match reading {
            Err(error) => {
                tracing::warn!(%error, parameter = options.reader.name(), "cannot read the SSM parameter; retrying")
            }
            Ok(reading) if reading.written.is_none() => {
                if !unwritten_warned {
                    tracing::warn!(
                        parameter = options.reader.name(),
                        value = %reading.value,
                        "the parameter has no Switchyard generation in its description (not written by an ssm_parameter step yet); waiting"
                    );
                    unwritten_warned = true;
                }
            }
            Ok(reading) => {
                if let Some((region, generation)) = next(applied, &reading) {
                    controller::pointer::write_env_values(&options.env_file, &reading.value, &region, generation)?;
                    applied = generation;
                    tracing::info!(%region, aws_region = %reading.value, generation, file = %options.env_file.display(), "active region changed");
                    if let Some(command) = &options.exec {
                        controller::pointer::run_exec_retrying(
                            command,
                            generation,
                            &reading.value,
                            &region,
                            || async { false },
                        )
                        .await;
                    }
                }
            }
        }
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(options.poll_ms)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use providers::ssm::Written;

    #[test]
    fn only_a_newer_written_generation_applies() {
        let reading = |generation| PointerReading {
            value: "eu-west-1".into(),
            written: Some(Written {
                generation,
                region: "eu".into(),
            }),
        };
        assert_eq!(next(3, &reading(4)), Some(("eu".into(), 4)));
        assert_eq!(next(4, &reading(4)), None);
        assert_eq!(next(5, &reading(4)), None);
        let unwritten = PointerReading {
            value: "eu-west-1".into(),
            written: None,
        };
        assert_eq!(next(0, &unwritten), None);
    }
}
