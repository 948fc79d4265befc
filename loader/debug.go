package loader

import "github.com/wsplice/wsplice/userspace/dataplane"

// SockState is one spliced socket as the slow path and the verdict see it.
type SockState struct {
	Cookie     uint64 `json:"cookie"`
	Consumed   uint64 `json:"consumed"`
	Written    uint64 `json:"written"`
	GivenBase  uint64 `json:"given_base"`
	Given      uint64 `json:"given"`
	Passed     uint64 `json:"passed"`
	Redirected uint64 `json:"redirected"`
	Received   uint64 `json:"received"`
	UserMode   bool   `json:"user_mode"`
	Notified   uint32 `json:"notified"`
	EOF        bool   `json:"eof"`
	Draining   bool   `json:"draining"`
	Error      string `json:"error,omitempty"`
}

// DebugPairs lists every spliced pair (client first), for /debug/pairs.
func (s *Splicer) DebugPairs() any {
	pairs := s.livePairs()
	out := make([][2]SockState, 0, len(pairs))
	for _, p := range pairs {
		var row [2]SockState
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			continue
		}
		for i, sk := range p.socks {
			st := SockState{Cookie: sk.cookie, Consumed: sk.consumed, Written: sk.written,
				GivenBase: sk.givenBase, UserMode: sk.userMode, EOF: sk.eof, Draining: sk.draining}
			var bs wspliceConnStats
			if err := s.objs.StatsMap.Lookup(sk.cookie, &bs); err == nil {
				st.Passed, st.Redirected, st.Notified = bs.Passed, bs.Redirected, bs.Notified
			}
			st.Given, _ = bytesGiven(sk.fd)
			if ti, err := dataplane.TCPInfo(sk.fd); err == nil {
				st.Received = ti.Bytes_received
			}
			if err := sockError(sk.fd); err != nil {
				st.Error = err.Error()
			}
			row[i] = st
		}
		p.mu.Unlock()
		out = append(out, row)
	}
	return out
}
