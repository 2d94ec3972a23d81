package stream

// FreshClaims returns how many claims skipped reading the state bucket.
func FreshClaims(s *Spool) int64 { return s.freshClaims.Load() }
