//! nemflow flowmgr.
