//! A serial port for Modbus RTU: opened non-blocking, put in raw mode with `termios` (speed,
//! parity, data and stop bits) and driven by tokio's reactor through [`AsyncFd`].
//!
//! Written against `libc` (already a dependency) rather than pulling in `tokio-serial` and its
//! tree; Outpost needs nothing beyond open, configure, read and write. Works with USB-RS485
//! adapters (`/dev/ttyUSB0`), on-board UARTs (`/dev/ttyS0`, `/dev/ttyAMA0`) and pseudo
//! terminals (which the tests use).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::config::Parity;

/// Line speeds `baud_rate` accepts.
pub const SUPPORTED_BAUD_RATES: [u32; 9] =
    [1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400];

/// The termios speed constant of a baud rate.
pub fn baud_constant(baud: u32) -> Option<libc::speed_t> {
    Some(match baud {
        1200 => libc::B1200,
        2400 => libc::B2400,
        4800 => libc::B4800,
        9600 => libc::B9600,
        19200 => libc::B19200,
        38400 => libc::B38400,
        57600 => libc::B57600,
        115200 => libc::B115200,
        230400 => libc::B230400,
        _ => return None,
    })
}

/// Line settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineSettings {
    pub baud_rate: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
}

/// An open serial port in raw mode.
#[derive(Debug)]
pub struct SerialPort {
    fd: AsyncFd<OwnedFd>,
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl SerialPort {
    /// Opens `path` and applies `settings`. Must run inside a tokio runtime.
    pub fn open(path: &str, settings: LineSettings) -> io::Result<SerialPort> {
        let speed = baud_constant(settings.baud_rate).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unsupported baud rate {}", settings.baud_rate),
            )
        })?;
        let c_path = CString::new(path).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "the path contains a NUL byte")
        })?;
        // SAFETY: `c_path` is a valid NUL-terminated string; the flags are plain constants.
        let raw = check(unsafe {
            libc::open(
                c_path.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: `open` just returned this descriptor and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        configure(fd.as_raw_fd(), speed, settings)?;
        // SAFETY: the `OwnedFd` is moved into the `AsyncFd`, which keeps it open (and the same
        // descriptor) until the `AsyncFd` is dropped.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(SerialPort { fd })
    }
}

fn configure(fd: libc::c_int, speed: libc::speed_t, settings: LineSettings) -> io::Result<()> {
    // SAFETY: termios is a plain C struct for which all-zero bytes are a valid value;
    // `tcgetattr` fills it in.
    let mut tio: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor and `tio` a valid, writable termios.
    check(unsafe { libc::tcgetattr(fd, &mut tio) })?;
    // SAFETY: `tio` is a valid termios.
    unsafe { libc::cfmakeraw(&mut tio) };
    tio.c_cflag &= !(libc::CSIZE | libc::PARENB | libc::PARODD | libc::CSTOPB | libc::CRTSCTS);
    tio.c_cflag |= libc::CLOCAL | libc::CREAD;
    tio.c_cflag |= if settings.data_bits == 7 {
        libc::CS7
    } else {
        libc::CS8
    };
    match settings.parity {
        Parity::None => {}
        Parity::Even => tio.c_cflag |= libc::PARENB,
        Parity::Odd => tio.c_cflag |= libc::PARENB | libc::PARODD,
    }
    if settings.stop_bits == 2 {
        tio.c_cflag |= libc::CSTOPB;
    }
    tio.c_iflag &= !(libc::IXON | libc::IXOFF | libc::IXANY);
    // VMIN = 1: with O_NONBLOCK an empty buffer then reads as EAGAIN (wait for readiness);
    // VMIN = 0 would read as 0 bytes, which looks like end of file.
    tio.c_cc[libc::VMIN] = 1;
    tio.c_cc[libc::VTIME] = 0;
    // SAFETY: `tio` is a valid termios and `speed` a termios speed constant.
    check(unsafe { libc::cfsetispeed(&mut tio, speed) })?;
    // SAFETY: as above.
    check(unsafe { libc::cfsetospeed(&mut tio, speed) })?;
    // SAFETY: `fd` is open and `tio` fully initialised.
    check(unsafe { libc::tcsetattr(fd, libc::TCSANOW, &tio) })?;
    // Drop whatever a previous user left in the buffers.
    // SAFETY: `fd` is open.
    check(unsafe { libc::tcflush(fd, libc::TCIOFLUSH) })?;
    Ok(())
}

impl AsyncRead for SerialPort {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let result = guard.try_io(|inner| {
                // SAFETY: `unfilled` is valid writable memory of the given length.
                let n = unsafe {
                    libc::read(
                        inner.as_raw_fd(),
                        unfilled.as_mut_ptr().cast::<libc::c_void>(),
                        unfilled.len(),
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for SerialPort {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            let result = guard.try_io(|inner| {
                // SAFETY: `data` is valid readable memory of the given length.
                let n = unsafe {
                    libc::write(
                        inner.as_raw_fd(),
                        data.as_ptr().cast::<libc::c_void>(),
                        data.len(),
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Writes go straight to the driver; there is no user-space buffer to flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Opens a pseudo-terminal pair: (master, slave, slave path).
    fn pty() -> (OwnedFd, OwnedFd, String) {
        let mut master = 0;
        let mut slave = 0;
        // SAFETY: the out-pointers are valid; name, termios and winsize may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty failed: {}", io::Error::last_os_error());
        // SAFETY: both descriptors were just returned by openpty and are owned here.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let path = std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd())).unwrap();
        (master, slave, path.to_string_lossy().into_owned())
    }

    #[tokio::test]
    async fn bytes_cross_a_pseudo_terminal_in_raw_mode() {
        let (master, _slave, path) = pty();
        let settings = LineSettings {
            baud_rate: 19200,
            parity: Parity::None,
            data_bits: 8,
            stop_bits: 1,
        };
        let mut port = SerialPort::open(&path, settings).unwrap();
        // Raw mode: bytes that a cooked terminal would interpret (CR, ^C, NUL) pass unchanged.
        let frame = [0x01u8, 0x03, 0x0d, 0x03, 0x00, 0x0a, 0xff];
        port.write_all(&frame).await.unwrap();
        let mut got = [0u8; 7];
        let mut master_file = std::fs::File::from(master);
        std::io::Read::read_exact(&mut master_file, &mut got).unwrap();
        assert_eq!(got, frame);
        std::io::Write::write_all(&mut master_file, &[0x11, 0x0d, 0x00]).unwrap();
        let mut back = [0u8; 3];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            port.read_exact(&mut back),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(back, [0x11, 0x0d, 0x00]);
    }

    #[test]
    fn an_unknown_speed_is_refused() {
        assert!(baud_constant(12345).is_none());
        assert!(SUPPORTED_BAUD_RATES
            .iter()
            .all(|b| baud_constant(*b).is_some()));
    }
}
