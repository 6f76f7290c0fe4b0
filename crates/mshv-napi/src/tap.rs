//! `Tap`: a host TAP interface for a virtio-net card. Frames from the host are read on a
//! thread of their own (`net_tap::Reader`, waiting in poll(2)) and handed to JavaScript
//! through a weak threadsafe function with a bounded queue: the event loop is not kept
//! alive by it, no libuv pool thread is held, and when JavaScript falls behind frames are
//! dropped as a NIC drops them.

use crate::errors::{guard, Result};
use napi::bindgen_prelude::{Buffer, Function};
use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use napi_derive::napi;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Frames waiting for the JavaScript thread before more are dropped.
const QUEUE: usize = 1024;

fn tap_error(e: net_tap::TapError) -> crate::errors::JsError {
    let code = match e {
        net_tap::TapError::BadName(_) => "EINVAL",
        net_tap::TapError::Open(_) | net_tap::TapError::Create { .. } => "ENODEV",
        net_tap::TapError::Io { .. } => "EIO",
    };
    napi::Error::new(code.to_string(), e.to_string())
}

/// A host TAP interface.
#[napi]
pub struct Tap {
    /// The interface; `None` once closed.
    tap: Option<Arc<net_tap::Tap>>,
    name: String,
    reader: Option<net_tap::Reader>,
    dropped: Arc<AtomicU64>,
    error: Arc<Mutex<Option<String>>>,
}

#[napi]
impl Tap {
    /// Opens (creating it if needed) the TAP interface `name` (`mshv%d` lets the kernel
    /// number it) and calls `onFrame` on the JavaScript thread for each frame the host
    /// sends. `ENODEV` when the host has no /dev/net/tun or refuses (CAP_NET_ADMIN).
    #[napi(factory)]
    pub fn open(
        name: String,
        #[napi(ts_arg_type = "(frame: Buffer) => void")] on_frame: Function<Buffer, ()>,
    ) -> Result<Tap> {
        guard("Tap.open", || {
            let tap = Arc::new(net_tap::Tap::open(&name).map_err(tap_error)?);
            let tsfn = on_frame
                .build_threadsafe_function::<Vec<u8>>()
                .weak::<true>()
                .max_queue_size::<QUEUE>()
                .build_callback(|ctx| Ok(Buffer::from(ctx.value)))
                .map_err(crate::errors::from_napi)?;
            let dropped = Arc::new(AtomicU64::new(0));
            let error = Arc::new(Mutex::new(None));
            let (d, err) = (dropped.clone(), error.clone());
            let reader = net_tap::Reader::spawn(
                tap.clone(),
                move |frame| {
                    if tsfn.call(frame, ThreadsafeFunctionCallMode::NonBlocking) != napi::Status::Ok
                    {
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                },
                move |e| {
                    if let Ok(mut slot) = err.lock() {
                        *slot = Some(e.to_string());
                    }
                },
            )
            .map_err(tap_error)?;
            Ok(Tap {
                name: tap.name().to_string(),
                tap: Some(tap),
                reader: Some(reader),
                dropped,
                error,
            })
        })
    }

    /// The interface's name, as the kernel gave it.
    #[napi(getter)]
    pub fn name(&self) -> String {
        self.name.clone()
    }

    /// Frames from the host dropped because JavaScript had not taken the ones before.
    #[napi(getter)]
    pub fn dropped(&self) -> f64 {
        self.dropped.load(Ordering::Relaxed) as f64
    }

    /// The error that ended reading, if one did.
    #[napi(getter)]
    pub fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }

    /// Sends a frame to the host; false when the interface took none (down, or full).
    #[napi]
    pub fn write(&self, frame: Buffer) -> Result<bool> {
        guard("Tap.write", || match &self.tap {
            Some(t) => t.write(&frame).map_err(tap_error),
            None => Err(crate::errors::closed("TAP interface")),
        })
    }

    /// Stops reading and closes the interface's descriptor (a TAP nobody made persistent
    /// then goes away). Calling it twice is harmless.
    #[napi]
    pub fn close(&mut self) {
        if let Some(mut r) = self.reader.take() {
            r.stop();
        }
        // The reader's thread has ended: this was the last reference, and the descriptor closes.
        self.tap = None;
    }
}
