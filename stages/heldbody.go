package stages

import "sync/atomic"

// heldBody is a message the Parser keeps in memory, without its sealed
// header, for the Sender and the Sent copy, so that it is read from storage
// once. It holds a share of the Parser's memory budget (the queue file's
// size) until it is released: whoever lets go of the job (Job.dropBody)
// gives the share back, and the Job itself knows nothing of the budget.
type heldBody struct {
	b      []byte     // the message, up to cap(b): the share (Write never grows b past it)
	over   bool       // more was written than the share: b is not the message
	budget *memBudget // where the share was taken; nil once released
}

// Write collects p while it fits in the share; beyond, it notes that it is
// over and keeps nothing more.
func (h *heldBody) Write(p []byte) (int, error) {
	if len(h.b)+len(p) > cap(h.b) {
		h.over = true
	} else if !h.over {
		h.b = append(h.b, p...)
	}
	return len(p), nil
}

// bytes returns the message, or nil if none is held (h is nil).
func (h *heldBody) bytes() []byte {
	if h == nil {
		return nil
	}
	return h.b
}

// release gives the share back to the budget. It does nothing on nil or
// the second time.
func (h *heldBody) release() {
	if h == nil || h.budget == nil {
		return
	}
	h.budget.give(int64(cap(h.b)))
	h.budget = nil
}

// memBudget bounds the bytes of messages held in memory by jobs in flight.
type memBudget struct{ left atomic.Int64 }

func newMemBudget(n int64) *memBudget {
	b := &memBudget{}
	b.left.Store(n)
	return b
}

// hold takes a share of n bytes for a message to be read into memory, or
// returns nil if they do not fit.
func (b *memBudget) hold(n int64) *heldBody {
	if b.left.Add(-n) < 0 {
		b.left.Add(n)
		return nil
	}
	return &heldBody{b: make([]byte, 0, n), budget: b}
}

func (b *memBudget) give(n int64) { b.left.Add(n) }
