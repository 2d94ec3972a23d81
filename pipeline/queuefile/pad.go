package queuefile

// PadField is the name of the header field that Enqueue writes right after
// the sealed field, so that the two together fill whole blocks of SealBlock
// bytes at the top of the queue file. It is part of the sealed block:
// removed with the seal wherever the seal is (IsSealedField), never sent,
// never in a Sent copy, and outside the digest. Its value is filler.
//
// Why: a Sent copy is the queue file minus that block. When the block is a
// whole number of the file system's blocks, the service cuts it off in
// place (fallocate's FALLOC_FL_COLLAPSE_RANGE on ext4 and XFS) and renames
// the same file into sent_dir, instead of writing a copy; see
// pipeline/spool's doc. Elsewhere it copies, as for files without padding.
const PadField = "X-SmtpQ-Pad"

// SealBlock is the size the sealed block is padded to a multiple of: the
// block size of ext4 and XFS as made by default. On a file system with
// larger blocks the service copies instead of cutting in place.
const SealBlock = 4096

// padLine is the most characters of one line of the padding field, line
// ending left out (RFC 5322's 78, as the sealed field's lines).
const padLine = 77

// PadSeal returns seal (a complete sealed field, as SealHeader makes it)
// followed by a PadField field that makes the whole a multiple of block
// bytes (SealBlock if block <= 0), each line ending in eol. The field is
// folded like the seal, every line within padLine characters and none
// blank, so the file stays a valid RFC 5322 message.
func PadSeal(seal []byte, eol string, block int) []byte {
	if block <= 0 {
		block = SealBlock
	}
	first := PadField + ": "
	minField := len(first) + 1 + len(eol) // one filler character
	minCont := len(" ") + 1 + len(eol)    // a continuation line
	total := (len(seal) + minField + block - 1) / block * block
	out := make([]byte, len(seal), total)
	copy(out, seal)
	prefix := first
	for left := total - len(seal); left > 0; {
		take := min(left, padLine+len(eol))
		if rest := left - take; rest > 0 && rest < minCont {
			take -= minCont - rest // leave room for a whole last line
		}
		out = append(out, prefix...)
		for range take - len(prefix) - len(eol) {
			out = append(out, '0')
		}
		out = append(out, eol...)
		left -= take
		prefix = " "
	}
	return out
}
