//! nemflow driver.
