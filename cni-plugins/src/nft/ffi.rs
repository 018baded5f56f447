//! The raw libnftnl calls nftnl 0.9's typed API does not make, kept in one place: any expression
//! by name and attributes ([`Expr`], through nftnl's public `Expression` trait), sets and maps
//! with concatenated keys or verdicts and their elements ([`RawSet`], through nftnl's `NlMsg`
//! trait), and sending a whole batch in one `sendmsg(2)` ([`send_batch`]).

use std::ffi::{c_void, CStr, CString};
use std::io;
use std::os::fd::AsRawFd;
use std::os::raw::c_char;
use std::ptr::NonNull;

use nftnl::expr::Expression;
use nftnl::nftnl_sys as sys;
use nftnl::{FinalizedBatch, MsgType, NlMsg, ProtoFamily, Rule};

/// One attribute value of an expression.
#[derive(Clone)]
enum Attr {
    U8(u8),
    U32(u32),
    U64(u64),
    Str(CString),
    Data(Vec<u8>),
}

/// Any libnftnl expression: its name (`payload`, `lookup`, `nat`, …) and attributes
/// (`NFTNL_EXPR_*`). The constructors in `expr.rs` each build one `nft --debug=netlink` line.
#[derive(Clone)]
pub struct Expr {
    name: &'static CStr,
    attrs: Vec<(u16, Attr)>,
}

impl Expr {
    pub fn new(name: &'static CStr) -> Self {
        Expr {
            name,
            attrs: Vec::new(),
        }
    }
    pub fn u8(mut self, attr: u32, v: u8) -> Self {
        self.attrs.push((attr as u16, Attr::U8(v)));
        self
    }
    pub fn u32(mut self, attr: u32, v: u32) -> Self {
        self.attrs.push((attr as u16, Attr::U32(v)));
        self
    }
    pub fn u64(mut self, attr: u32, v: u64) -> Self {
        self.attrs.push((attr as u16, Attr::U64(v)));
        self
    }
    /// A string attribute (a chain or set name). Names with a NUL byte cannot exist in the
    /// kernel; such a name becomes "" and the kernel refuses the rule.
    pub fn str(mut self, attr: u32, v: &str) -> Self {
        let s = CString::new(v).unwrap_or_default();
        self.attrs.push((attr as u16, Attr::Str(s)));
        self
    }
    pub fn data(mut self, attr: u32, v: &[u8]) -> Self {
        self.attrs.push((attr as u16, Attr::Data(v.to_vec())));
        self
    }
}

impl Expression for Expr {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        // SAFETY: nftnl_expr_alloc returns an owned expression (checked for NULL) that the rule
        // takes over; every setter copies its value (strings and data are copied by libnftnl,
        // and outlive the calls as they are borrowed from `self`).
        unsafe {
            let e = sys::nftnl_expr_alloc(self.name.as_ptr());
            let e = NonNull::new(e).expect("nftnl_expr_alloc failed: out of memory");
            let p = e.as_ptr();
            for (a, v) in &self.attrs {
                match v {
                    Attr::U8(v) => sys::nftnl_expr_set_u8(p, *a, *v),
                    Attr::U32(v) => sys::nftnl_expr_set_u32(p, *a, *v),
                    Attr::U64(v) => sys::nftnl_expr_set_u64(p, *a, *v),
                    Attr::Str(s) => {
                        sys::nftnl_expr_set_str(p, *a, s.as_ptr());
                    }
                    Attr::Data(d) => {
                        sys::nftnl_expr_set(p, *a, d.as_ptr() as *const c_void, d.len() as u32);
                    }
                }
            }
            e
        }
    }
}

/// What a [`RawSet`] is: its key and, for a map, that its values are verdicts.
pub struct SetSpec<'a> {
    pub key_type: u32,
    pub key_len: u32,
    /// `NFT_SET_*` flags (`NFT_SET_MAP` for a verdict map).
    pub flags: u32,
    /// `Some(NFT_DATA_VERDICT)` for a verdict map.
    pub data_type: Option<u32>,
    /// libnftnl user data (only read back by `nft list`).
    pub udata: Option<&'a [u8]>,
}

/// An owned `nftnl_set`: the NEWSET/DELSET message of a named set or map ([`RawSet::as_set`]),
/// or a carrier of elements for NEWSETELEM/DELSETELEM ([`RawSet::as_elems`]). One message
/// must stay under 64 KiB: callers chunk elements.
pub struct RawSet {
    ptr: NonNull<sys::nftnl_set>,
    family: ProtoFamily,
}

// SAFETY: the set is owned and only ever used through &self/&mut self; libnftnl keeps no
// thread-local state in it.
unsafe impl Send for RawSet {}

impl Drop for RawSet {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from nftnl_set_alloc and is freed once, here (with its elements).
        unsafe { sys::nftnl_set_free(self.ptr.as_ptr()) }
    }
}

impl RawSet {
    /// An element carrier (or, with [`RawSet::with_spec`], a set definition) for set `name`
    /// of `table`. `id` is the batch-local set id rules may refer to the set by.
    pub fn new(table: &CStr, family: ProtoFamily, name: &str, id: u32) -> Self {
        let name = CString::new(name).unwrap_or_default();
        // SAFETY: nftnl_set_alloc returns an owned set (checked for NULL); the setters copy the
        // integers and strings given.
        unsafe {
            let p = sys::nftnl_set_alloc();
            let ptr = NonNull::new(p).expect("nftnl_set_alloc failed: out of memory");
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_FAMILY as u16, family as u32);
            sys::nftnl_set_set_str(p, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
            sys::nftnl_set_set_str(p, sys::NFTNL_SET_NAME as u16, name.as_ptr());
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_ID as u16, id);
            RawSet { ptr, family }
        }
    }

    /// Sets what the set is (for NEWSET).
    pub fn with_spec(self, spec: &SetSpec) -> Self {
        let p = self.ptr.as_ptr();
        // SAFETY: `p` is our live set; the setters copy integers and (udata) the bytes given.
        unsafe {
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_FLAGS as u16, spec.flags);
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_KEY_TYPE as u16, spec.key_type);
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_KEY_LEN as u16, spec.key_len);
            if let Some(d) = spec.data_type {
                sys::nftnl_set_set_u32(p, sys::NFTNL_SET_DATA_TYPE as u16, d);
            }
            if let Some(u) = spec.udata {
                sys::nftnl_set_set_data(
                    p,
                    sys::NFTNL_SET_USERDATA as u16,
                    u.as_ptr() as *const c_void,
                    u.len() as u32,
                );
            }
        }
        self
    }

    /// The expected number of elements: with it the kernel picks a fixed-size hash (or a
    /// bitmap) instead of a resizable one, much cheaper to walk, which the kernel does for
    /// every verdict map on each commit that adds a jump (its loop check).
    pub fn with_size(self, n: u32) -> Self {
        // SAFETY: `ptr` is our live set; the setter copies the integer.
        unsafe { sys::nftnl_set_set_u32(self.ptr.as_ptr(), sys::NFTNL_SET_DESC_SIZE as u16, n) };
        self
    }

    /// A default timeout for the set's elements (a set with `NFT_SET_TIMEOUT`): elements a
    /// rule adds or refreshes (`update @set`) expire `ms` after their last refresh.
    pub fn with_timeout(self, ms: u64) -> Self {
        // SAFETY: `ptr` is our live set; the setter copies the integer.
        unsafe { sys::nftnl_set_set_u64(self.ptr.as_ptr(), sys::NFTNL_SET_TIMEOUT as u16, ms) };
        self
    }

    /// Adds an element `key`, with `key : <verdict> [chain]` for a verdict map (`verdict` is
    /// `NFT_GOTO`, `NFT_JUMP`, `NF_DROP`…; `chain` for jump and goto).
    pub fn add(&mut self, key: &[u8], verdict: Option<(i32, Option<&str>)>) {
        let chain = verdict
            .and_then(|(_, c)| c)
            .map(|c| CString::new(c).unwrap_or_default());
        // SAFETY: the element is allocated (checked), filled with copies of `key` and `chain`,
        // and handed over to our live set, which frees it.
        unsafe {
            let e = sys::nftnl_set_elem_alloc();
            assert!(!e.is_null(), "nftnl_set_elem_alloc failed: out of memory");
            sys::nftnl_set_elem_set(
                e,
                sys::NFTNL_SET_ELEM_KEY as u16,
                key.as_ptr() as *const c_void,
                key.len() as u32,
            );
            if let Some((code, _)) = verdict {
                sys::nftnl_set_elem_set_u32(e, sys::NFTNL_SET_ELEM_VERDICT as u16, code as u32);
            }
            if let Some(c) = &chain {
                sys::nftnl_set_elem_set_str(e, sys::NFTNL_SET_ELEM_CHAIN as u16, c.as_ptr());
            }
            sys::nftnl_set_elem_add(self.ptr.as_ptr(), e);
        }
    }

    /// The set itself, as a NEWSET (Add) or DELSET (Del) message.
    pub fn as_set(&self) -> SetMsg<'_> {
        SetMsg(self)
    }

    /// Its elements, as a NEWSETELEM (Add) or DELSETELEM (Del) message.
    pub fn as_elems(&self) -> ElemsMsg<'_> {
        ElemsMsg(self)
    }
}

pub struct SetMsg<'a>(&'a RawSet);
pub struct ElemsMsg<'a>(&'a RawSet);

// SAFETY: `write` builds exactly one netlink message into `buf`, which nftnl's batch sizes for
// nft_nlmsg_maxsize(); the payload builders respect that bound for sets and for element lists
// below 64 KiB (the callers' chunking).
unsafe impl NlMsg for SetMsg<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        let (ty, flags) = match msg_type {
            MsgType::Add => (libc::NFT_MSG_NEWSET, libc::NLM_F_CREATE | libc::NLM_F_ACK),
            MsgType::Del => (libc::NFT_MSG_DELSET, libc::NLM_F_ACK),
        };
        // SAFETY: see the impl: `buf` has room for one message; the set is live.
        unsafe {
            let h = sys::nftnl_nlmsg_build_hdr(
                buf as *mut c_char,
                ty as u16,
                self.0.family as u16,
                flags as u16,
                seq,
            );
            sys::nftnl_set_nlmsg_build_payload(h, self.0.ptr.as_ptr());
        }
    }
}

// SAFETY: as for SetMsg.
unsafe impl NlMsg for ElemsMsg<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        // No NLM_F_EXCL: adding an element that is there with the same value is a no-op.
        let (ty, flags) = match msg_type {
            MsgType::Add => (
                libc::NFT_MSG_NEWSETELEM,
                libc::NLM_F_CREATE | libc::NLM_F_ACK,
            ),
            MsgType::Del => (libc::NFT_MSG_DELSETELEM, libc::NLM_F_ACK),
        };
        // SAFETY: see the impl: `buf` has room for one message; the set is live.
        unsafe {
            let h = sys::nftnl_nlmsg_build_hdr(
                buf as *mut c_char,
                ty as u16,
                self.0.family as u16,
                flags as u16,
                seq,
            );
            sys::nftnl_set_elems_nlmsg_build_payload(h, self.0.ptr.as_ptr());
        }
    }
}

/// A netfilter netlink socket that may move to another thread (the agent's blocking pool).
pub struct OwnedSocket(pub mnl::Socket);

// SAFETY: an mnl socket is an fd and its bound address, owned by this value alone (never
// shared): moving it between threads is as safe as moving the fd. It stays in the network
// namespace it was opened in, wherever it is used from.
unsafe impl Send for OwnedSocket {}

impl OwnedSocket {
    pub fn new() -> io::Result<OwnedSocket> {
        Ok(OwnedSocket(mnl::Socket::new(mnl::Bus::Netfilter)?))
    }
}

/// Sends every page of `batch` in one `sendmsg(2)` on `socket`, after raising its buffers
/// (SO_SNDBUFFORCE/SO_RCVBUFFORCE, as nft does) so the datagram fits and no ACK is dropped.
/// The kernel takes one datagram as one transaction: mnl's `send_all` (one datagram per 128 KiB
/// page) would split a big batch, and the kernel aborts a BEGIN without its END.
pub fn send_batch(socket: &mnl::Socket, batch: &FinalizedBatch) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    let pages: Vec<&[u8]> = batch.iter().collect();
    let total: usize = pages.iter().map(|p| p.len()).sum();
    let acks = batch.sequence_numbers().len();
    let sndbuf = i32::try_from(total + 65536).unwrap_or(i32::MAX);
    let rcvbuf = i32::try_from(acks * 1024 + (1 << 20)).unwrap_or(i32::MAX);
    setsockopt_int(fd, libc::SO_SNDBUFFORCE, sndbuf)?;
    setsockopt_int(fd, libc::SO_RCVBUFFORCE, rcvbuf)?;
    let mut iov: Vec<libc::iovec> = pages
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut c_void,
            iov_len: p.len(),
        })
        .collect();
    // SAFETY: both are plain C structs for which all-zero is a valid value.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = &mut sa as *mut libc::sockaddr_nl as *mut c_void;
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as u32;
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len();
    // SAFETY: `msg` points at `sa` and at `iov`, whose entries point into `batch`'s pages; all of
    // them outlive the call, and sendmsg only reads them.
    let n = unsafe { libc::sendmsg(fd, &msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != total {
        return Err(io::Error::other(format!(
            "netlink sendmsg sent {n} of {total} bytes"
        )));
    }
    Ok(())
}

fn setsockopt_int(fd: i32, opt: i32, val: i32) -> io::Result<()> {
    // SAFETY: `val` is a live i32 and its size is passed along; `fd` is an open socket.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            &val as *const i32 as *const c_void,
            std::mem::size_of::<i32>() as u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
