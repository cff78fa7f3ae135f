//! Segment anchors end to end (filled in below).
