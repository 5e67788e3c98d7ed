// The dashboard's script: only the parts a server-rendered page cannot do alone (see src/http/ui/mod.rs).
// Live parts follow the JSON API's server-sent events; buttons and forms call the JSON API with the session's
// CSRF token. No library, no build step.
(() => {
  'use strict';
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const notice = document.getElementById('notice');
  const say = (text, error) => {
    notice.textContent = text;
    notice.className = error ? 'error' : '';
  };

  // A UUID v7 (time-ordered, as the node's own ids are, so lists newest first order it rightly).
  const uuid7 = () => {
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    let t = Date.now();
    for (let i = 5; i >= 0; i--) { b[i] = t % 256; t = Math.floor(t / 256); }
    b[6] = (b[6] & 0x0f) | 0x70;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  };

  // A call of the JSON API; throws an Error with the node's message when refused.
  const call = async (method, url, body, headers) => {
    const all = Object.assign({ 'X-CSRF-Token': csrf }, headers || {});
    if (body !== undefined) all['Content-Type'] = 'application/json';
    const response = await fetch(url, {
      method, headers: all, credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let answer = null;
    try { answer = await response.json(); } catch (_) { /* no body */ }
    if (!response.ok) {
      const message = answer && answer.error ? answer.error.message : '';
      throw new Error(`${response.status} ${message || response.statusText}`);
    }
    return answer;
  };
  const command = (url, type, payload, tenant) =>
    call('POST', url, { command_id: uuid7(), type, payload: payload || {} }, tenant ? { 'Weft-Tenant': tenant } : {});

  const time = (us) => (us == null ? '–' : new Date(us / 1000).toISOString().slice(0, 19).replace('T', ' '));
  const short = (id) => (id || '').slice(0, 8);

  // Fills the `data-field` cells under `root` from `item`, as the server drew them.
  const fill = (root, item) => {
    root.querySelectorAll('[data-field]').forEach((el) => {
      const field = el.dataset.field;
      switch (field) {
        case 'status':
          el.textContent = item.status;
          el.className = `badge s-${item.status}`;
          break;
        case 'link':
          if (!el.getAttribute('href').endsWith(item.id)) el.setAttribute('href', el.getAttribute('href') + item.id);
          el.textContent = short(item.id);
          el.title = item.id;
          break;
        case 'steps': el.textContent = `${item.steps_done}/${item.steps_total}`; break;
        case 'updated_at': case 'finished_at': case 'retry_at':
          el.textContent = item[field] == null ? (field === 'retry_at' ? '' : '–') : time(item[field]);
          break;
        case 'tokens':
          el.textContent = 'step' in item
            ? `${item.input_tokens} / ${item.output_tokens}` : `${item.input_tokens} in, ${item.output_tokens} out`;
          break;
        case 'cost': el.textContent = `$${item.cost_usd}`; break;
        case 'output':
          if (item.output && !el.querySelector('a')) {
            const a = document.createElement('a');
            a.href = `/ui/documents/${item.output}`;
            a.textContent = short(item.output);
            a.title = item.output;
            el.replaceChildren(a);
          }
          break;
        case 'size_bytes':
          el.textContent = el.closest('dl') ? `${item.size_bytes} bytes` : String(item.size_bytes);
          break;
        default:
          if (field in item) el.textContent = item[field] == null ? '' : String(item[field]);
      }
    });
  };

  // The state of the page's live feeds, for people (and tests) to see: `open` once every feed is connected.
  const feeds = [];
  const feedState = () => {
    document.body.dataset.live = feeds.every((f) => f.readyState === EventSource.OPEN) ? 'open' : 'connecting';
  };
  const follow = (url, handlers) => {
    const source = new EventSource(url, { withCredentials: true });
    feeds.push(source);
    source.onopen = feedState;
    source.onerror = feedState;
    Object.entries(handlers).forEach(([name, handle]) =>
      source.addEventListener(name, (e) => handle(JSON.parse(e.data))));
    return source;
  };

  // A live list: each changed item redrawn in place; on the first page a new one appears at the top.
  document.querySelectorAll('table[data-live]:not(#events)').forEach((table) => {
    const body = table.tBodies[0];
    const template = table.querySelector('template');
    follow(table.dataset.live, {
      item: (item) => {
        let row = body.querySelector(`tr[data-id="${item.id}"]`);
        if (!row) {
          if (!('prepend' in table.dataset) || !template) return;
          row = template.content.firstElementChild.cloneNode(true);
          row.dataset.id = item.id;
          body.prepend(row);
        }
        fill(row, item);
      },
      left: (item) => {
        const row = body.querySelector(`tr[data-id="${item.id}"]`);
        if (row) row.remove();
      },
    });
  });

  // A job's page: its facts, steps, DAG and buttons follow its state; its log grows.
  const job = document.getElementById('job');
  if (job) {
    const log = document.getElementById('log');
    let reading = Promise.resolve();
    const readLog = () => {
      reading = reading.then(async () => {
        const cursor = log.dataset.cursor;
        const page = await call('GET', `${job.dataset.logs}?limit=1000${cursor ? `&cursor=${cursor}` : ''}`);
        page.items.forEach((line) => {
          const li = document.createElement('li');
          li.className = `l-${line.level}`;
          const at = document.createElement('time');
          at.textContent = time(line.at);
          li.append(at, ` ${line.message}`);
          log.append(li);
          log.dataset.cursor = line.seq;
        });
      }).catch((e) => say(`Reading the log: ${e.message}`, true));
    };
    follow(job.dataset.live, {
      state: (state) => {
        fill(job.querySelector('dl.facts'), state);
        (state.steps || []).forEach((step) => {
          const row = job.querySelector(`#steps tr[data-step="${CSS.escape(step.step)}"]`);
          if (row) fill(row, step);
          const node = job.querySelector(`g[data-node="${CSS.escape(step.step)}"]`);
          if (node) {
            node.setAttribute('class', `node s-${step.status}`);
            node.querySelector('text.detail').textContent = step.status;
          }
        });
        job.querySelectorAll('[data-show-when]').forEach((button) => {
          button.hidden = !button.dataset.showWhen.split(' ').includes(state.status);
        });
        readLog();
      },
    });
  }

  // A document's page follows its state.
  const doc = document.getElementById('document');
  if (doc) follow(doc.dataset.live, { state: (state) => fill(doc.querySelector('dl.facts'), state) });

  // A stream's live tail: each new event appended as the server draws it.
  const events = document.getElementById('events');
  if (events && events.dataset.live) {
    const stream = location.pathname.split('/').pop();
    follow(events.dataset.live, {
      change: (e) => {
        if (events.querySelector(`tr[data-version="${e.version}"]`)) return;
        const row = events.tBodies[0].insertRow();
        row.dataset.version = e.version;
        const cell = (content) => { const td = row.insertCell(); td.append(content); return td; };
        const link = document.createElement('a');
        link.href = `/ui/streams/${stream}?at=${e.version}`;
        link.textContent = e.version;
        cell(link);
        const type = document.createElement('code');
        type.textContent = e.type;
        cell(type);
        [String(e.position), time(e.recorded_at), e.actor, short(e.correlation_id), short(e.causation_id)].forEach(cell);
        const details = document.createElement('details');
        const summary = document.createElement('summary');
        summary.textContent = 'payload';
        const pre = document.createElement('pre');
        pre.className = 'json';
        pre.textContent = JSON.stringify(e.event, null, 2);
        details.append(summary, pre);
        cell(details);
      },
    });
  }

  // Buttons that send a command: `data-command` (the route), `data-type`, `data-confirm`, `data-then`.
  document.querySelectorAll('button[data-command]').forEach((button) => {
    button.addEventListener('click', async () => {
      if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
      button.disabled = true;
      const type = button.dataset.type;
      const payload = ['cancel', 'retry'].includes(type) ? { reason: `${type} from the dashboard` } : {};
      try {
        const reply = await command(button.dataset.command, type, payload);
        say(`${type}: done`);
        if (button.dataset.then === 'reload') {
          // Once the read model has the change (`after` waits for it), so the page shows it.
          const [, , aggregate, id] = button.dataset.command.split('/');
          await call('GET', `/${aggregate}s/${id}?after=${reply.last_position || 0}`).catch(() => {});
          location.reload();
        }
      } catch (e) {
        say(`${type}: ${e.message}`, true);
      } finally {
        button.disabled = false;
      }
    });
  });

  // Rebuilding a projection: the request waits for the swap; its progress is polled meanwhile.
  document.querySelectorAll('button[data-rebuild]').forEach((button) => {
    button.addEventListener('click', async () => {
      const name = button.dataset.rebuild;
      if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
      const row = button.closest('tr');
      const bar = row.querySelector('progress');
      const show = (status) => {
        fill(row, status);
        const work = status.rebuild || {};
        if (work.target) bar.value = Math.min(100, (100 * work.position) / work.target);
        row.querySelector('[data-field="rebuild"]').textContent = work.state === 'done'
          ? `${work.work} done, took over at ${work.took_over_at}` : `${work.work || 'rebuild'} ${work.state || 'starting'}`;
      };
      button.disabled = true;
      bar.hidden = false;
      bar.value = 0;
      const poll = setInterval(() => call('GET', `/projections/${name}`).then(show).catch(() => {}), 250);
      try {
        const done = await call('POST', `/projections/${name}/rebuild`);
        bar.value = 100;
        say(`${name} rebuilt; it took over at position ${done.position}`);
      } catch (e) {
        say(`Rebuilding ${name}: ${e.message}`, true);
      } finally {
        clearInterval(poll);
        button.disabled = false;
        call('GET', `/projections/${name}`).then(show).catch(() => {});
      }
    });
  });

  const labels = (text) => Object.fromEntries((text || '').split(',').map((p) => p.trim()).filter(Boolean)
    .map((p) => { const i = p.indexOf('='); return i < 0 ? [p, ''] : [p.slice(0, i).trim(), p.slice(i + 1).trim()]; }));
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // Upload: register, then PUT the file straight to the signed URL with a progress bar, then open the
  // document once the node has it (asking it to confirm when no notification came in 2 s).
  const upload = document.getElementById('upload');
  if (upload) {
    upload.addEventListener('submit', async (event) => {
      event.preventDefault();
      const file = upload.elements.file.files[0];
      const bar = document.getElementById('upload-progress');
      const button = upload.querySelector('button');
      button.disabled = true;
      try {
        const registered = await call('POST', '/documents', {
          name: file.name, content_type: file.type || 'application/octet-stream', size_bytes: file.size,
          labels: labels(upload.elements.labels.value),
        }, { 'Weft-Tenant': upload.elements.tenant.value });
        bar.hidden = false;
        bar.value = 0;
        await new Promise((resolve, reject) => {
          const put = new XMLHttpRequest();
          put.open(registered.upload.method, registered.upload.url);
          Object.entries(registered.upload.headers || {}).forEach(([name, value]) => {
            if (!['content-length', 'host'].includes(name.toLowerCase())) put.setRequestHeader(name, value);
          });
          put.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total; };
          put.onload = () => (put.status < 300 ? resolve() : reject(new Error(`the upload answered ${put.status}`)));
          put.onerror = () => reject(new Error('the upload failed'));
          put.send(file);
        });
        bar.value = 100;
        say('Uploaded; waiting for the node to have it');
        const started = Date.now();
        let confirmed = false;
        for (;;) {
          const found = await call('GET', `/documents/${registered.id}`);
          if (found.status === 'uploaded') break;
          if (!confirmed && Date.now() - started > 2000) {
            await call('POST', `/documents/${registered.id}/confirm`);
            confirmed = true;
          }
          if (Date.now() - started > 30000) throw new Error('the node did not record the upload in 30 s');
          await sleep(100);
        }
        location.assign(`/ui/documents/${registered.id}`);
      } catch (e) {
        say(`Upload: ${e.message}`, true);
      } finally {
        button.disabled = false;
      }
    });
  }

  // A workflow's run form: submits a job, then opens its page.
  const run = document.getElementById('run');
  if (run) {
    run.addEventListener('submit', async (event) => {
      event.preventDefault();
      const chosen = Array.from(run.elements.documents.selectedOptions);
      const parameters = Object.fromEntries(run.elements.parameters.value.split('\n').map((l) => l.trim())
        .filter(Boolean).map((l) => { const i = l.indexOf('='); return i < 0 ? [l, ''] : [l.slice(0, i), l.slice(i + 1)]; }));
      const id = uuid7();
      try {
        await command(`/commands/job/${id}`, 'submit', {
          workflow: run.dataset.workflow, workflow_version: Number(run.elements.version.value),
          inputs: chosen.map((o) => o.value), priority: Number(run.elements.priority.value || 0),
          idempotency_key: null, parameters,
        }, chosen.length ? chosen[0].dataset.tenant : undefined);
        location.assign(`/ui/jobs/${id}`);
      } catch (e) {
        say(`Run: ${e.message}`, true);
      }
    });
  }

  const login = document.getElementById('login');
  if (login) {
    login.addEventListener('submit', async (event) => {
      event.preventDefault();
      try {
        await call('POST', '/auth/session', { user: login.elements.user.value, password: login.elements.password.value });
        location.assign(login.dataset.next);
      } catch (e) {
        say(`Sign-in refused: ${e.message}`, true);
      }
    });
  }

  const logout = document.getElementById('logout');
  if (logout) {
    logout.addEventListener('click', async () => {
      await call('DELETE', '/auth/session').catch(() => {});
      location.assign('/ui/login');
    });
  }

  feedState();
})();
