// The notebook widget's streamed audio (app/notebook_audio.py): the kernel sends 16-bit PCM
// chunks as binary buffers of custom messages; each is queued with the Web Audio API right
// after the one before, so the lead-in plays at once and the continuation follows as it is
// written. The element's data-* attributes say what was queued (read by the tests).

function render({ model, el }) {
  let context = null;
  let next = 0; // AudioContext time at which the next chunk starts
  let sources = [];
  let queued = 0; // seconds queued since "start"
  let chunks = 0;
  let ended = false;
  let format = { sample_rate: 44100, channels: 2 };

  const line = document.createElement("div");
  line.className = "perceiver-music-stream";
  line.style.cssText = "display:flex;gap:8px;align-items:center;font-size:0.9em;min-height:1.6em";
  const label = document.createElement("span");
  const stop = document.createElement("button");
  stop.textContent = "Stop the stream";
  stop.disabled = true;
  line.append(label, stop);
  el.append(line);

  function show(state, text) {
    label.textContent = text;
    el.dataset.state = state;
    el.dataset.queuedSeconds = queued.toFixed(4);
    el.dataset.chunks = String(chunks);
    el.dataset.contextState = context ? context.state : "none";
    stop.disabled = !context;
  }

  function halt() {
    for (const source of sources) {
      try {
        source.stop();
      } catch (_) {
        // never started: nothing to stop
      }
    }
    sources = [];
    if (context) context.close();
    context = null;
  }

  function queue(view) {
    // a copy: the message's buffer may not be aligned for 16-bit reads
    const bytes = view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength);
    const pcm = new Int16Array(bytes);
    const channels = format.channels;
    const frames = Math.floor(pcm.length / channels);
    if (frames === 0) return;
    const buffer = context.createBuffer(channels, frames, format.sample_rate);
    for (let c = 0; c < channels; c++) {
      const data = buffer.getChannelData(c);
      for (let i = 0; i < frames; i++) data[i] = pcm[i * channels + c] / 32768;
    }
    const source = context.createBufferSource();
    source.buffer = buffer;
    source.connect(context.destination);
    // a chunk that arrives late starts a little after now (a short gap, never an overlap)
    next = Math.max(next, context.currentTime + 0.05);
    source.start(next);
    next += buffer.duration;
    queued += buffer.duration;
    chunks += 1;
    sources.push(source);
    source.onended = () => {
      sources = sources.filter((s) => s !== source);
      if (ended && sources.length === 0) show("played", "the stream has played: the finished audio is below");
    };
  }

  model.on("msg:custom", (message, buffers) => {
    if (message.kind === "start") {
      halt();
      format = { sample_rate: message.sample_rate, channels: message.channels };
      context = new AudioContext({ sampleRate: format.sample_rate });
      next = context.currentTime + 0.1;
      queued = 0;
      chunks = 0;
      ended = false;
      show("streaming", "▶ variation 1 as it is written: the lead-in, then the continuation");
    } else if (message.kind === "chunk" && context) {
      for (const view of buffers) queue(view);
      show("streaming", `▶ variation 1 as it is written · ${queued.toFixed(1)} s so far`);
    } else if (message.kind === "end") {
      ended = true;
      show(context ? "ending" : "idle", message.text || "");
    } else if (message.kind === "stop") {
      halt();
      show("idle", message.text || "");
    }
  });
  stop.addEventListener("click", () => {
    halt();
    show("stopped", "stream stopped");
  });
  show("idle", "");
  return () => halt();
}

export default { render };
