package stream_test

import (
	"sync"
	"testing"

	"github.com/smtpq/smtpq/pipeline/natstest"
	"github.com/smtpq/smtpq/pipeline/spool/stream"
)

// Nodes that start together all set up the R3 stream and its bucket: a
// clustered create that times out for each of them is tried again.
func TestNodesStartingTogether(t *testing.T) {
	c := natstest.NewCluster(t, 3)
	var wg sync.WaitGroup
	for i := range 3 {
		js := connect(t, c.URLs()[i])
		wg.Go(func() {
			if _, _, err := stream.Setup(t.Context(), js, "", 3); err != nil {
				t.Errorf("node %d: %v", i, err)
			}
		})
	}
	wg.Wait()
}
