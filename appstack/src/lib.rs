//! nemflow appstack.
