//! This crate's raw FFI, kept in one place: an nftables `fib` expression (which nftnl lacks)
//! and parsing table names out of a netfilter dump.

use std::ffi::CStr;
use std::ptr::NonNull;

use nftnl::expr::{Expression, Register};
use nftnl::nftnl_sys as sys;
use nftnl::Rule;

/// `fib daddr type` into a register: the route type of the destination address, so rules can
/// match "addressed to this host" (RTN_LOCAL) like iptables' `addrtype --dst-type LOCAL`.
pub struct FibDaddrType(pub Register);

const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
pub const RTN_LOCAL: u32 = 2;

impl Expression for FibDaddrType {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        // SAFETY: nftnl_expr_alloc returns an owned expression (checked for NULL below) that the
        // caller frees; the setters copy plain integers into it.
        unsafe {
            let e = sys::nftnl_expr_alloc(c"fib".as_ptr());
            let e = NonNull::new(e).expect("nftnl_expr_alloc(fib) failed: out of memory");
            sys::nftnl_expr_set_u32(e.as_ptr(), sys::NFTNL_EXPR_FIB_DREG as u16, self.0.to_raw());
            sys::nftnl_expr_set_u32(
                e.as_ptr(),
                sys::NFTNL_EXPR_FIB_RESULT as u16,
                NFT_FIB_RESULT_ADDRTYPE,
            );
            sys::nftnl_expr_set_u32(
                e.as_ptr(),
                sys::NFTNL_EXPR_FIB_FLAGS as u16,
                NFTA_FIB_F_DADDR,
            );
            e
        }
    }
}

/// Callback for a table dump: collects (family, name).
pub fn table_cb(header: &libc::nlmsghdr, out: &mut Vec<(u32, String)>) -> libc::c_int {
    // SAFETY: `header` is a complete netlink message handed over by mnl_cb_run; the table object
    // is allocated, filled by the parser, read, and freed here.
    unsafe {
        let t = sys::nftnl_table_alloc();
        if t.is_null() {
            return -1;
        }
        if sys::nftnl_table_nlmsg_parse(header, t) >= 0 {
            let name = sys::nftnl_table_get_str(t, sys::NFTNL_TABLE_NAME as u16);
            let family = sys::nftnl_table_get_u32(t, sys::NFTNL_TABLE_FAMILY as u16);
            if !name.is_null() {
                out.push((family, CStr::from_ptr(name).to_string_lossy().into_owned()));
            }
        }
        sys::nftnl_table_free(t);
    }
    1
}
