//! The process-wide guest RAM limit, alone in its own test process (the limit and the
//! byte count are global, so no other test may allocate beside it).

use hv_core::memory::{live_bytes, process_memory_limit, set_process_memory_limit};
use hv_core::{HostRegion, PAGE_SIZE};

#[test]
fn the_process_limit_bounds_guest_ram_and_released_memory_counts_again() {
    assert!(process_memory_limit() > 0, "defaults to the host's memory");
    let base = live_bytes();
    set_process_memory_limit(base + 4 * PAGE_SIZE).unwrap();
    let a = HostRegion::new(4 * PAGE_SIZE).unwrap();
    let e = HostRegion::new(PAGE_SIZE).unwrap_err();
    assert_eq!(e.code(), "ENOMEM");
    assert!(e.to_string().contains("this process"), "{e}");
    assert_eq!(
        live_bytes(),
        base + 4 * PAGE_SIZE,
        "a refusal charges nothing"
    );
    a.retire();
    assert_eq!(live_bytes(), base, "retired memory is given back at once");
    let b = HostRegion::new(4 * PAGE_SIZE).unwrap();
    drop(a);
    assert_eq!(
        live_bytes(),
        base + 4 * PAGE_SIZE,
        "dropping a retired region counts nothing"
    );
    drop(b);
    assert_eq!(live_bytes(), base);
}
