"use strict";
// Synchronized zoom: the frames of one group show the same region of same-sized images; the wheel,
// a drag or a double-click on any of them moves all of them.
const MAX_PIXEL_SIZE = 32; // deepest zoom: one image pixel as 32 screen pixels

class ZoomGroup {
  constructor(frames) {
    this.frames = [];
    this.reset();
    frames.forEach((frame) => this.add(frame));
  }

  reset() {
    this.scale = 1; // 1: the whole image fills the frame
    this.cx = 0.5; // the image point (fractions of width, height) at the frame's centre
    this.cy = 0.5;
  }

  add(frame) {
    this.frames.push(frame);
    frame.addEventListener("wheel", (event) => {
      event.preventDefault();
      this.zoomAt(frame, event.clientX, event.clientY, Math.exp(-event.deltaY * 0.002));
    }, { passive: false });
    frame.addEventListener("dblclick", (event) => this.zoomAt(frame, event.clientX, event.clientY, 2));
    let last = null;
    frame.addEventListener("pointerdown", (event) => {
      last = [event.clientX, event.clientY];
      frame.setPointerCapture(event.pointerId);
      frame.classList.add("dragging");
    });
    frame.addEventListener("pointermove", (event) => {
      if (!last) return;
      const box = frame.getBoundingClientRect();
      this.cx -= (event.clientX - last[0]) / (box.width * this.scale);
      this.cy -= (event.clientY - last[1]) / (box.height * this.scale);
      last = [event.clientX, event.clientY];
      this.apply();
    });
    const release = () => { last = null; frame.classList.remove("dragging"); };
    frame.addEventListener("pointerup", release);
    frame.addEventListener("pointercancel", release);
    const image = frame.querySelector("img");
    if (image) image.addEventListener("load", () => this.apply());
  }

  maxScale() {
    const frame = this.frames[0];
    const image = frame && frame.querySelector("img");
    if (!image || !image.naturalWidth || !frame.clientWidth) return 16;
    return Math.max(1, MAX_PIXEL_SIZE * image.naturalWidth / frame.clientWidth);
  }

  zoomAt(frame, clientX, clientY, factor) {
    const box = frame.getBoundingClientRect();
    const px = (clientX - box.left) / box.width - 0.5;
    const py = (clientY - box.top) / box.height - 0.5;
    const u = this.cx + px / this.scale; // the image point under the pointer stays under it
    const v = this.cy + py / this.scale;
    this.scale = Math.min(Math.max(this.scale * factor, 1), this.maxScale());
    this.cx = u - px / this.scale;
    this.cy = v - py / this.scale;
    this.apply();
  }

  zoomCentre(factor) {
    this.scale = Math.min(Math.max(this.scale * factor, 1), this.maxScale());
    this.apply();
  }

  actualPixels() {
    const frame = this.frames.find((f) => f.offsetParent !== null && f.querySelector("img").naturalWidth);
    if (!frame) return;
    this.scale = Math.min(Math.max(frame.querySelector("img").naturalWidth / frame.clientWidth, 1), this.maxScale());
    this.apply();
  }

  apply() {
    const half = 0.5 / this.scale;
    this.cx = Math.min(Math.max(this.cx, half), 1 - half);
    this.cy = Math.min(Math.max(this.cy, half), 1 - half);
    for (const frame of this.frames) {
      const image = frame.querySelector("img");
      const width = frame.clientWidth, height = frame.clientHeight;
      const x = width * (0.5 - this.cx * this.scale), y = height * (0.5 - this.cy * this.scale);
      image.style.transform = `translate(${x}px, ${y}px) scale(${this.scale})`;
      frame.classList.toggle("pixels", image.naturalWidth > 0 && this.scale * width > 1.5 * image.naturalWidth);
    }
  }
}

const groups = [];
for (const element of document.querySelectorAll(".zoom-group")) {
  groups.push(new ZoomGroup([...element.querySelectorAll(".frame")]));
}
window.addEventListener("resize", () => groups.forEach((group) => group.apply()));

// The sample explorer: a viewer over the overview for one input file at a time.
const dataElement = document.getElementById("explorer-data");
if (dataElement) {
  const data = JSON.parse(dataElement.textContent);
  const viewer = document.getElementById("viewer");
  const viewGroup = new ZoomGroup([...viewer.querySelectorAll(".frame")]);
  groups.push(viewGroup);
  const views = {};
  for (const view of viewer.querySelectorAll(".view")) views[view.dataset.kind] = view;
  const state = { file: 0, sample: 0 };

  const cell = (row, text) => { const td = document.createElement("td"); td.textContent = text; row.appendChild(td); };
  const fixed = (value, digits) => (typeof value === "number" ? value.toFixed(digits) : "-");

  function showSample() {
    const file = data.files[state.file];
    const sample = file.samples[state.sample];
    const view = views.sample;
    view.querySelector("img").src = sample.image;
    view.querySelector("h3 b").textContent = `${state.sample + 1} / ${file.samples.length}, seed ${sample.seed}`;
    viewer.querySelectorAll("#figures tbody tr").forEach((row, index) => row.classList.toggle("current", index === state.sample));
    viewer.querySelectorAll("#sample-strip img").forEach((image, index) => image.classList.toggle("current", index === state.sample));
  }

  function showFile(index, sample = 0) {
    state.file = (index + data.files.length) % data.files.length;
    state.sample = sample;
    const file = data.files[state.file];
    viewer.querySelector(".title").textContent = `${file.name} (${state.file + 1} / ${data.files.length})`;
    for (const [kind, view] of Object.entries(views)) {
      const source = kind === "sample" ? file.samples[sample].image : file.views[kind];
      view.hidden = !source;
      view.querySelector(".frame").style.aspectRatio = `${file.width} / ${file.height}`;
      if (source) view.querySelector("img").src = source;
    }
    const body = viewer.querySelector("#figures tbody");
    body.replaceChildren();
    const strip = viewer.querySelector("#sample-strip");
    strip.replaceChildren();
    file.samples.forEach((s, i) => {
      const row = document.createElement("tr");
      cell(row, `${i + 1}`);
      cell(row, `${s.seed}`);
      cell(row, s.written_consistency || "-");
      cell(row, fixed(s.coefficient_agreement, 6));
      cell(row, fixed(s.block_agreement, 6));
      cell(row, fixed(s.consistency_rmse, 3));
      cell(row, fixed(s.seconds, 2));
      cell(row, s.format || "png");
      row.addEventListener("click", () => { state.sample = i; showSample(); });
      body.appendChild(row);
      const thumb = document.createElement("img");
      thumb.src = s.thumb;
      thumb.alt = `sample ${i + 1}`;
      thumb.title = `seed ${s.seed}`;
      thumb.addEventListener("click", () => { state.sample = i; showSample(); });
      strip.appendChild(thumb);
      new Image().src = s.image; // flipping then shows loaded images
    });
    viewGroup.reset();
    viewGroup.apply();
    showSample();
  }

  function flip(delta) {
    const count = data.files[state.file].samples.length;
    state.sample = (state.sample + delta + count) % count;
    showSample();
  }

  function open(index, sample) {
    viewer.hidden = false;
    document.body.style.overflow = "hidden";
    showFile(index, sample);
  }

  function close() {
    viewer.hidden = true;
    document.body.style.overflow = "";
  }

  document.querySelectorAll(".card").forEach((card) => {
    const index = Number(card.dataset.file);
    card.querySelectorAll("[data-sample]").forEach((element) => element.addEventListener("click", (event) => {
      event.preventDefault();
      open(index, Number(element.dataset.sample));
    }));
  });
  const actions = {
    "previous-sample": () => flip(-1), "next-sample": () => flip(1),
    "previous-file": () => showFile(state.file - 1), "next-file": () => showFile(state.file + 1),
    "zoom-in": () => viewGroup.zoomCentre(1.5), "zoom-out": () => viewGroup.zoomCentre(1 / 1.5),
    "fit": () => { viewGroup.reset(); viewGroup.apply(); }, "actual": () => viewGroup.actualPixels(),
    "close": close,
  };
  viewer.querySelectorAll("button[data-action]").forEach((button) => {
    button.addEventListener("click", actions[button.dataset.action]);
  });
  const keys = {
    ArrowLeft: "previous-sample", ArrowRight: "next-sample", ArrowUp: "previous-file", ArrowDown: "next-file",
    PageUp: "previous-file", PageDown: "next-file", "+": "zoom-in", "=": "zoom-in", "-": "zoom-out",
    "0": "fit", "1": "actual", Escape: "close",
  };
  document.addEventListener("keydown", (event) => {
    if (viewer.hidden || event.ctrlKey || event.metaKey || event.altKey || !(event.key in keys)) return;
    event.preventDefault();
    actions[keys[event.key]]();
  });
}
