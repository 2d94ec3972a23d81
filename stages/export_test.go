package stages

import (
	"fmt"
	"time"
)

// CheckHeld reports an error unless tag is held now (for the external
// tests of package stages).
func CheckHeld(h *RouteHolds, tag string) error {
	if _, ok := h.heldName("20261127T120000.000000000Z-xxxxxxxxxxxxxxxx+"+tag+".eml", time.Now()); !ok {
		return fmt.Errorf("route tag %s is not held", tag)
	}
	return nil
}
