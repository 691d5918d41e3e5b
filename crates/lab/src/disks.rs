//! `--disk-mib N`: each region's store keeps its data on a filesystem of its own, a tmpfs of N
//! MiB mounted on the store's data folder (Linux, root or CAP_SYS_ADMIN; `mount` from
//! util-linux), so `lab ctl fill-disk REGION` can fill that region's disk — and only that
//! region's — as a full data volume would, and `lab ctl free-disk REGION` give the room back.
//! Filling writes a ballast file (real pages, not a sparse file) until the free space the store
//! counts (the filesystem's, plus its reserve file, which it gives back at once) is half its
//! watermark: below the watermark the store refuses new writes and still takes deletes, so the
//! region's write probe fails and the controller moves traffic away.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The mount program (util-linux).
pub const MOUNT_PROGRAM: &str = "mount";
/// The unmount program (util-linux).
pub const UMOUNT_PROGRAM: &str = "umount";
/// The ballast file `fill-disk` writes in the region's data folder.
pub const BALLAST_FILE: &str = "lab-ballast";
/// Smallest `--disk-mib`: the store's files, its reserve and a watermark must fit.
pub const DISK_MIB_MIN: u64 = 64;
/// Largest `--disk-mib` (tmpfs lives in memory).
pub const DISK_MIB_MAX: u64 = 16 * 1024;
/// The ballast is written in chunks of this many bytes.
const BALLAST_CHUNK_BYTES: usize = 1024 * 1024;

/// One region's data filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionDisk {
    pub region: String,
    /// The store's data folder, the mount point.
    pub path: PathBuf,
    /// The filesystem's size.
    pub bytes: u64,
    /// The store's `--disk-free-bytes-min` on it.
    pub watermark_bytes: u64,
    /// The store's `--disk-reserve-bytes` on it (below half the watermark, so a filled disk
    /// is below the watermark even counting the reserve).
    pub reserve_bytes: u64,
}

impl RegionDisk {
    /// A disk of `mib` MiB whose store refuses writes below a quarter of it free and keeps a
    /// sixteenth as its reserve.
    pub fn new(region: &str, path: PathBuf, mib: u64) -> RegionDisk {
        let bytes = mib * 1024 * 1024;
        RegionDisk {
            region: region.to_string(),
            path,
            bytes,
            watermark_bytes: bytes / 4,
            reserve_bytes: bytes / 16,
        }
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("run `{program} {}`: {e} (is util-linux installed?)", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Mounts each region's tmpfs, replacing any a killed lab left behind.
pub fn setup(disks: &[RegionDisk]) -> Result<(), String> {
    teardown(disks);
    for disk in disks {
        std::fs::create_dir_all(&disk.path).map_err(|e| format!("create {}: {e}", disk.path.display()))?;
        let path = disk.path.display().to_string();
        let size = format!("size={},mode=0700", disk.bytes);
        if let Err(error) = run(MOUNT_PROGRAM, &["-t", "tmpfs", "-o", &size, "tmpfs", &path]) {
            teardown(disks);
            return Err(format!(
                "--disk-mib: {error}. It needs root (or CAP_SYS_ADMIN) to mount a tmpfs per region; run the lab without --disk-mib otherwise"
            ));
        }
    }
    Ok(())
}

/// Unmounts every region's tmpfs (lazily, so a store still closing does not hold it). Quiet:
/// some may not be mounted.
pub fn teardown(disks: &[RegionDisk]) {
    for disk in disks {
        while is_mount_point(&disk.path) {
            if run(UMOUNT_PROGRAM, &["-l", &disk.path.display().to_string()]).is_err() {
                break;
            }
        }
    }
}

/// Whether `path` is a mount point (its device differs from its parent's).
pub fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let (Ok(here), Some(Ok(parent))) = (std::fs::metadata(path), path.parent().map(std::fs::metadata)) else {
        return false;
    };
    here.dev() != parent.dev()
}

/// Free bytes of the filesystem holding `path`, as the store measures them.
pub fn free_bytes(path: &Path) -> Result<u64, String> {
    let stat = rustix::fs::statvfs(path).map_err(|e| format!("statvfs {}: {e}", path.display()))?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Fills the region's disk until half its watermark is free; says how much it wrote.
pub fn fill(disk: &RegionDisk) -> Result<String, String> {
    if !is_mount_point(&disk.path) {
        return Err(format!(
            "{}'s data folder {} is not a disk of its own: start the lab with --disk-mib to fill one region's disk",
            disk.region,
            disk.path.display()
        ));
    }
    // The store counts its reserve file as free: leave that much less.
    let target_free = (disk.watermark_bytes / 2).saturating_sub(disk.reserve_bytes);
    let free = free_bytes(&disk.path)?;
    let mut wanted = free.saturating_sub(target_free);
    let path = disk.path.join(BALLAST_FILE);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    let chunk = vec![0xa5_u8; BALLAST_CHUNK_BYTES];
    let mut written: u64 = 0;
    while wanted > 0 {
        let n = usize::try_from(wanted).unwrap_or(usize::MAX).min(BALLAST_CHUNK_BYTES);
        match file.write_all(&chunk[..n]) {
            Ok(()) => {
                written += n as u64;
                wanted -= n as u64;
            }
            // The store wrote meanwhile: the disk is as full as it gets.
            Err(error) if error.raw_os_error() == Some(28) => break,
            Err(error) => return Err(format!("write {}: {error}", path.display())),
        }
    }
    file.sync_all().ok();
    let free = free_bytes(&disk.path)?;
    Ok(format!(
        "{} MiB of ballast in {}: {} KiB free, the store's watermark is {} KiB",
        written / (1024 * 1024),
        path.display(),
        free / 1024,
        disk.watermark_bytes / 1024
    ))
}

/// Removes the ballast; says how much room came back.
pub fn free(disk: &RegionDisk) -> Result<String, String> {
    let path = disk.path.join(BALLAST_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(format!("remove {}: {error}", path.display())),
    }
    let free = free_bytes(&disk.path)?;
    Ok(format!("{} KiB free on {}'s disk", free / 1024, disk.region))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_refuses_writes_below_a_quarter_free_and_its_reserve_fits_under_half_of_that() {
        let disk = RegionDisk::new("us-east-1", PathBuf::from("/lab/data/us-east-1"), 256);
        assert_eq!(disk.bytes, 256 * 1024 * 1024);
        assert_eq!(disk.watermark_bytes, 64 * 1024 * 1024);
        assert!(disk.reserve_bytes < disk.watermark_bytes / 2);
    }

    #[test]
    fn filling_a_folder_that_is_no_disk_of_its_own_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = RegionDisk::new("eu", dir.path().join("eu"), 64);
        std::fs::create_dir_all(&disk.path).expect("mkdir");
        let error = fill(&disk).expect_err("not a mount point");
        assert!(error.contains("--disk-mib"), "{error}");
        assert!(!disk.path.join(BALLAST_FILE).exists(), "nothing written");
        // Freeing without ballast is fine (idempotent heal).
        assert!(free(&disk).expect("free").contains("free on eu's disk"));
    }
}
