// smtpq console: live counts, host table and message state (polling the
// console's JSON), and "select all". No inline script anywhere: the
// Content-Security-Policy allows this file only. Text from the service is
// set with textContent, never parsed as HTML.
(function () {
  'use strict';
  var body = document.body;
  body.dataset.loadId = String(Date.now()) + String(Math.random()).slice(2, 8);
  body.dataset.liveUpdates = '0';

  function updated() {
    body.dataset.liveUpdates = String(Number(body.dataset.liveUpdates) + 1);
  }

  function poll(url, apply, every) {
    function tick() {
      fetch(url, { credentials: 'same-origin', headers: { 'Accept': 'application/json' } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (d) { if (d) { apply(d); } })
        .catch(function () {})
        .then(function () { setTimeout(tick, every); });
    }
    setTimeout(tick, every);
  }

  function cell(text, cls) {
    var td = document.createElement('td');
    td.textContent = text;
    if (cls) { td.className = cls; }
    return td;
  }

  function updateOverview(d) {
    Object.keys(d.counts).forEach(function (state) {
      var n = document.querySelector('[data-count="' + state + '"]');
      if (n) { n.textContent = String(d.counts[state].n); }
      var o = document.querySelector('[data-oldest="' + state + '"]');
      if (o) { o.textContent = d.counts[state].oldest ? 'oldest ' + d.counts[state].oldest : ''; }
    });
    var tbody = document.getElementById('hosts');
    if (tbody) {
      while (tbody.firstChild) { tbody.removeChild(tbody.firstChild); }
      d.hosts.forEach(function (h) {
        var tr = document.createElement('tr');
        var td = document.createElement('td');
        var a = document.createElement('a');
        a.href = '/queue?host=' + encodeURIComponent(h.host);
        a.textContent = h.host;
        td.appendChild(a);
        tr.appendChild(td);
        tr.appendChild(cell(String(h.queued), 'num'));
        tr.appendChild(cell(h.sessions, 'num'));
        tr.appendChild(cell(h.rate));
        tr.appendChild(cell(h.circuit));
        tr.appendChild(cell(h.error, 'err'));
        tr.appendChild(cell(h.paused));
        tbody.appendChild(tr);
      });
    }
    updated();
  }

  if (body.dataset.page === 'overview') {
    poll('/api/summary', updateOverview, 2000);
  }

  var st = document.getElementById('state');
  if (st) {
    var url = '/api/state?key=' + encodeURIComponent(st.dataset.key) + '&in=' + encodeURIComponent(st.dataset.in || '');
    poll(url, function (d) {
      var s = d.state || 'gone';
      if (s !== st.dataset.state) {
        st.dataset.state = s;
        st.textContent = s;
      }
      updated();
    }, 1000);
  }

  var all = document.getElementById('select-all');
  if (all) {
    all.addEventListener('change', function () {
      document.querySelectorAll('input[name="key"]').forEach(function (c) { c.checked = all.checked; });
    });
  }
})();
