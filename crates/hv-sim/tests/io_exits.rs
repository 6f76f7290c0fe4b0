mod common;

use common::*;
use hv_core::message::*;
use hv_core::Exit;
use iced_x86::code_asm::*;
use mshv_bindings::*;

#[test]
fn real_mode_out_exits_with_the_io_message_and_rip_at_the_instruction() {
    let mut g = guest();
    let code = assemble(16, 0x1000, |a| {
        a.mov(al, 0x41).unwrap();
        a.mov(dx, 0x3f8).unwrap();
        a.out(dx, al).unwrap();
        a.hlt().unwrap();
    });
    g.load(0x1000, &code);
    g.real_mode(0x1000);
    assert_eq!(g.run(), Exit::Message);
    assert_eq!(g.msg.message_type(), HVMSG_X64_IO_PORT_INTERCEPT);
    let io: hv_x64_io_port_intercept_message = g.msg.payload();
    assert_eq!({ io.port_number }, 0x3f8);
    assert_eq!({ io.rax } & 0xff, 0x41);
    assert_eq!({ io.header.rip }, 0x1000 + 2 + 3);
    assert_eq!(io.header.instruction_length(), 1);
    assert_eq!(
        { io.header.intercept_access_type },
        HV_INTERCEPT_ACCESS_WRITE as u8
    );
    // SAFETY: reading the bitfield view of a plain u8.
    assert_eq!(unsafe { io.access_info.__bindgen_anon_1.access_size() }, 1);
    assert_eq!(g.get(hv_register_name_HV_X64_REGISTER_RIP), 0x1005);
    // The VMM completes the OUT by advancing RIP; then the guest halts.
    g.set(hv_register_name_HV_X64_REGISTER_RIP, 0x1006);
    assert_eq!(g.run(), Exit::Message);
    assert_eq!(g.msg.message_type(), HVMSG_X64_HALT);
}
