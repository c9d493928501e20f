//! Sans-IO chunk scheduler (issue 4).
