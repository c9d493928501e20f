//! The end-to-end tests are in tests/; shared helpers in tests/common.
