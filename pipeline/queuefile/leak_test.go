package queuefile_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// TestParamsNeverFormatTheirSecrets prints Params, and values holding them
// as stages.Job does (an exported field), with every verb. Known limit: an
// unexported field holding Params is printed by fmt through reflection
// without calling any method, so the secret shows; no code here does that.
func TestParamsNeverFormatTheirSecrets(t *testing.T) {
	p := queuefile.Params{Host: "h", Username: "u", Password: queuefile.NewSecret("pw-leak-1"), OAuth2Token: queuefile.NewSecret("tok-leak-2"), To: []string{"a@b"}}
	holders := []any{p, &p, []queuefile.Params{p}, map[string]*queuefile.Params{"x": &p},
		struct{ P *queuefile.Params }{&p}, struct{ P queuefile.Params }{p}}
	for _, h := range holders {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d"} {
			out := fmt.Sprintf(verb, h)
			if strings.Contains(out, "pw-leak-1") || strings.Contains(out, "tok-leak-2") {
				t.Errorf("%s of %T printed a secret: %s", verb, h, out)
			}
		}
	}
}
