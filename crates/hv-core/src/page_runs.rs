//! Guest RAM as runs of pages, for snapshots: which pages hold anything (zero pages
//! are left out of a snapshot), and RAM made from a snapshot file's runs, mapped
//! private so the guest's writes copy only the pages it writes (restore copies
//! nothing; many VMs restored from one file share its pages until they write them).

use crate::error::{HvError, Result};
use crate::memory::HostRegion;
use crate::page::PAGE_SIZE;
use std::fs::File;
use std::os::fd::AsRawFd;

/// `count` pages from page `first` of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    pub first: u64,
    pub count: u64,
}

/// A run of pages and where its bytes are in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRun {
    pub pages: PageRun,
    /// Byte offset in the file (a multiple of 4 KiB).
    pub offset: u64,
}

/// The runs of pages of `region` that hold a non-zero byte, in order.
pub fn nonzero_runs(region: &HostRegion) -> Vec<PageRun> {
    let words = PAGE_SIZE / 8;
    let pages = region.len() / PAGE_SIZE;
    let base = region.as_ptr().cast::<u64>();
    let mut runs: Vec<PageRun> = Vec::new();
    for page in 0..pages {
        // SAFETY: `page * words + i` < len / 8 words of this live, 8-byte aligned mapping;
        // read volatile, as guest RAM is read everywhere (`crate::shared`).
        let used = (0..words).any(|i| unsafe { base.add(page * words + i).read_volatile() } != 0);
        if !used {
            continue;
        }
        match runs.last_mut() {
            Some(r) if r.first + r.count == page as u64 => r.count += 1,
            _ => runs.push(PageRun {
                first: page as u64,
                count: 1,
            }),
        }
    }
    runs
}

/// Checks `runs` against a region of `pages` pages and a file of `file_len` bytes:
/// inside both, page-aligned, in order and not overlapping.
pub fn check_file_runs(runs: &[FileRun], pages: u64, file_len: u64) -> Result<()> {
    let mut next = 0u64;
    for (i, r) in runs.iter().enumerate() {
        let bad = |why: String| HvError::InvalidArgument(format!("file run {i}: {why}"));
        let PageRun { first, count } = r.pages;
        if count == 0 || first < next || first.checked_add(count).is_none_or(|end| end > pages) {
            return Err(bad(format!(
                "pages {first:#x}+{count:#x} are empty, out of order or past the region's {pages:#x}"
            )));
        }
        let bytes = count * PAGE_SIZE as u64;
        if !r.offset.is_multiple_of(PAGE_SIZE as u64)
            || r.offset.checked_add(bytes).is_none_or(|end| end > file_len)
        {
            return Err(bad(format!(
                "bytes {:#x}+{bytes:#x} are not 4 KiB aligned or go past the file's {file_len:#x}",
                r.offset
            )));
        }
        next = first + count;
    }
    Ok(())
}

/// Makes the region's contents `runs` of `file`, mapped private (reads see the file,
/// a write copies the page), and zero elsewhere: every page it had is dropped, so what
/// was written to it before (a machine built again before its restore) is gone. The
/// region stays at its address: views over it see the new contents.
pub fn map_file_private(region: &HostRegion, file: &File, runs: &[FileRun]) -> Result<()> {
    let file_len = file
        .metadata()
        .map_err(|e| HvError::ioctl("stat the snapshot", e.raw_os_error().unwrap_or(0)))?
        .len();
    check_file_runs(runs, (region.len() / PAGE_SIZE) as u64, file_len)?;
    // SAFETY: MAP_FIXED over exactly this region's own pages: fresh zero pages in place.
    let zeroed = unsafe {
        libc::mmap(
            region.as_ptr().cast(),
            region.len(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if zeroed == libc::MAP_FAILED {
        return Err(HvError::ioctl(
            "zero guest memory",
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ));
    }
    map_runs(region, file, runs)
}

/// Maps `runs` of `file` over the region's pages, private (the runs checked by the caller).
fn map_runs(region: &HostRegion, file: &File, runs: &[FileRun]) -> Result<()> {
    for r in runs {
        let len = (r.pages.count as usize) * PAGE_SIZE;
        // SAFETY: MAP_FIXED over pages of this region's own mapping (checked inside it
        // above), backed by a file range checked to exist (no SIGBUS on access); the
        // region's Drop unmaps its whole reservation, these pages included.
        let addr = unsafe {
            libc::mmap(
                region
                    .as_ptr()
                    .add(r.pages.first as usize * PAGE_SIZE)
                    .cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                file.as_raw_fd(),
                r.offset as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(HvError::ioctl(
                "map the snapshot's pages",
                std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            ));
        }
    }
    Ok(())
}

/// One snapshot of a chain: its file, its runs of pages, and the pages it says are
/// zero now (written since its parent, to zero).
pub struct Layer<'a> {
    pub file: &'a File,
    pub runs: &'a [FileRun],
    pub zero: &'a [PageRun],
}

/// Makes the region's contents a chain of snapshots, the first the full one, each
/// later one's pages (and zero pages) over the ones before: [`map_file_private`] for
/// each in turn. Every layer is checked before anything changes.
pub fn map_layers(region: &HostRegion, layers: &[Layer]) -> Result<()> {
    let pages = (region.len() / PAGE_SIZE) as u64;
    for l in layers {
        let len = l
            .file
            .metadata()
            .map_err(|e| HvError::ioctl("stat the snapshot", e.raw_os_error().unwrap_or(0)))?
            .len();
        check_file_runs(l.runs, pages, len)?;
        if let Some(z) = l
            .zero
            .iter()
            .find(|z| z.first.checked_add(z.count).is_none_or(|e| e > pages))
        {
            return Err(HvError::InvalidArgument(format!(
                "zero pages {:#x}+{:#x} are past the region's {pages:#x}",
                z.first, z.count
            )));
        }
    }
    let Some((first, rest)) = layers.split_first() else {
        return Ok(());
    };
    map_file_private(region, first.file, first.runs)?;
    zero_runs(region, first.zero)?;
    for l in rest {
        map_runs(region, l.file, l.runs)?;
        zero_runs(region, l.zero)?;
    }
    Ok(())
}

/// Fresh zero pages over `runs` of the region.
fn zero_runs(region: &HostRegion, runs: &[PageRun]) -> Result<()> {
    for r in runs {
        // SAFETY: MAP_FIXED over pages of this region's own mapping (checked inside it by
        // the caller).
        let addr = unsafe {
            libc::mmap(
                region.as_ptr().add(r.first as usize * PAGE_SIZE).cast(),
                r.count as usize * PAGE_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(HvError::ioctl(
                "zero guest memory",
                std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            ));
        }
    }
    Ok(())
}

/// The runs of set bits in a dirty bitmap (a bit per page, LSB first in u64 words).
pub fn bitmap_runs(bits: &[u64], pages: u64) -> Vec<PageRun> {
    let mut runs: Vec<PageRun> = Vec::new();
    for page in 0..pages {
        let set = bits
            .get((page / 64) as usize)
            .is_some_and(|w| w >> (page % 64) & 1 != 0);
        if !set {
            continue;
        }
        match runs.last_mut() {
            Some(r) if r.first + r.count == page => r.count += 1,
            _ => runs.push(PageRun {
                first: page,
                count: 1,
            }),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn runs_skip_zero_pages_and_a_file_maps_back_copy_on_write() {
        let r = HostRegion::new(8 * PAGE_SIZE).unwrap();
        r.write(PAGE_SIZE + 5, &[1]).unwrap();
        r.write(2 * PAGE_SIZE, &[2]).unwrap();
        r.write(6 * PAGE_SIZE + 4095, &[3]).unwrap();
        let runs = nonzero_runs(&r);
        assert_eq!(
            runs,
            [
                PageRun { first: 1, count: 2 },
                PageRun { first: 6, count: 1 }
            ]
        );
        // A file of those pages, then a region made from it.
        let path = std::env::temp_dir().join(format!("hv-core-runs-{}", std::process::id()));
        let mut f = File::create(&path).unwrap();
        let mut file_runs = Vec::new();
        let mut offset = 0u64;
        for run in &runs {
            let mut buf = vec![0u8; run.count as usize * PAGE_SIZE];
            r.read(run.first as usize * PAGE_SIZE, &mut buf).unwrap();
            f.write_all(&buf).unwrap();
            file_runs.push(FileRun {
                pages: *run,
                offset,
            });
            offset += buf.len() as u64;
        }
        drop(f);
        let f = File::open(&path).unwrap();
        let copy = HostRegion::new(8 * PAGE_SIZE).unwrap();
        copy.write(3 * PAGE_SIZE, &[7]).unwrap(); // what the builder wrote goes
        map_file_private(&copy, &f, &file_runs).unwrap();
        let mut a = vec![0u8; 8 * PAGE_SIZE];
        let mut b = vec![0u8; 8 * PAGE_SIZE];
        r.read(0, &mut a).unwrap();
        copy.read(0, &mut b).unwrap();
        assert!(a == b, "the restored region reads as the original");
        // A write copies the page: the file keeps its bytes.
        copy.write(PAGE_SIZE + 5, &[9]).unwrap();
        let again = HostRegion::new(8 * PAGE_SIZE).unwrap();
        map_file_private(&again, &f, &file_runs).unwrap();
        let mut one = [0u8];
        again.read(PAGE_SIZE + 5, &mut one).unwrap();
        assert_eq!(one, [1]);
        // Runs outside the file or the region are refused before anything is mapped.
        let past = FileRun {
            pages: PageRun { first: 7, count: 1 },
            offset: 1 << 20,
        };
        assert!(map_file_private(&again, &f, &[past]).is_err());
        let outside = FileRun {
            pages: PageRun { first: 8, count: 1 },
            offset: 0,
        };
        assert!(map_file_private(&again, &f, &[outside]).is_err());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn layers_put_each_snapshot_over_the_ones_before() {
        let dir = std::env::temp_dir();
        let write = |name: &str, pages: &[(u8, usize)]| {
            let path = dir.join(format!("hv-core-layer-{}-{name}", std::process::id()));
            let mut f = File::create(&path).unwrap();
            for &(fill, _) in pages {
                f.write_all(&vec![fill; PAGE_SIZE]).unwrap();
            }
            path
        };
        // The full snapshot: pages 1 and 2; the next: page 2 anew, page 6, page 1 zero.
        let base = write("base", &[(1, 1), (2, 2)]);
        let next = write("next", &[(22, 2), (6, 6)]);
        let (fb, fn_) = (File::open(&base).unwrap(), File::open(&next).unwrap());
        let run = |first, count, offset| FileRun {
            pages: PageRun { first, count },
            offset,
        };
        let base_runs = [run(1, 2, 0)];
        let next_runs = [run(2, 1, 0), run(6, 1, PAGE_SIZE as u64)];
        let zero = [PageRun { first: 1, count: 1 }];
        let r = HostRegion::new(8 * PAGE_SIZE).unwrap();
        map_layers(
            &r,
            &[
                Layer {
                    file: &fb,
                    runs: &base_runs,
                    zero: &[],
                },
                Layer {
                    file: &fn_,
                    runs: &next_runs,
                    zero: &zero,
                },
            ],
        )
        .unwrap();
        let byte = |page: usize| {
            let mut b = [0u8];
            r.read(page * PAGE_SIZE + 7, &mut b).unwrap();
            b[0]
        };
        assert_eq!(
            (0..8).map(byte).collect::<Vec<_>>(),
            [0, 0, 22, 0, 0, 0, 6, 0]
        );
        let past = [PageRun { first: 8, count: 1 }];
        let bad = map_layers(
            &r,
            &[Layer {
                file: &fb,
                runs: &base_runs,
                zero: &past,
            }],
        );
        assert!(bad.is_err(), "zero pages past the region are refused");
        assert_eq!(
            bitmap_runs(&[0b1011_0000_0110], 12),
            [
                PageRun { first: 1, count: 2 },
                PageRun { first: 8, count: 2 },
                PageRun {
                    first: 11,
                    count: 1
                }
            ]
        );
        std::fs::remove_file(&base).unwrap();
        std::fs::remove_file(&next).unwrap();
    }
}
