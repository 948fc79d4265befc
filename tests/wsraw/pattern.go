package wsraw

// PatternByte is byte off of the stream wsplice-echo sends for ?push= and
// ?send=.
func PatternByte(off int64) byte { return byte(off % 251) }

// CheckPattern returns the index of the first byte of b that differs from
// the pattern at stream offset off, or -1.
func CheckPattern(b []byte, off int64) int {
	for i, c := range b {
		if c != PatternByte(off+int64(i)) {
			return i
		}
	}
	return -1
}
