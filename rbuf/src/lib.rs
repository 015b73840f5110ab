//! nemflow rbuf.
