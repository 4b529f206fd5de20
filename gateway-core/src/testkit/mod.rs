//! Test support: a scriptable mock backend and the backend conformance suite.
