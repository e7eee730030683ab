/*
 * Atrium's slide viewer: a whole-slide image through OpenSeadragon, its annotations
 * drawn over it.
 *
 * The page is served without a token and holds no data. It takes a token from the
 * address (#token=…) or signs in (sign-in.js, loaded before this file), then reads
 *   GET  {api}/slides/{id}                       size, pixel spacing (mpp)
 *   GET  {api}/slides/{id}/dzi                   the Deep Zoom descriptor
 *   GET  {api}/slides/{id}/dzi_files/{l}/{c}_{r}.{format}   tiles (XHR, with the token)
 *   GET  {api}/annotations?target_type=slide&target_id={id}&bbox=x,y,w,h
 * The annotation query covers the visible region and a margin around it; it is
 * asked again, once the view rests, when the view leaves that region or zooms in
 * more than twice. It is asked once in pixels and once in micrometres: the server
 * keeps each shape's bounding box in the shape's own units.
 *
 * For scripts and tests: window.atriumViewerReady is true while every tile of the
 * view is loaded and the view's annotations are drawn (false from the next frame
 * on while the view changes); window.atriumViewerError holds {title, detail,
 * status} once the page has given up; window.atriumViewer exposes the
 * OpenSeadragon viewer and imageToClient(x, y), image pixels → CSS pixels of the
 * window.
 */
(function () {
  "use strict";

  const SVG_NS = "http://www.w3.org/2000/svg";
  const DZI_NS = "http://schemas.microsoft.com/deepzoom/2008";
  const PAGE_SIZE = 1000; // annotations per request: the API's maximum
  const MAX_SHAPES = 5000; // drawn at once; more in the region → a notice to zoom in
  const QUERY_DELAY_MS = 250; // the view must rest this long before a new query
  const MARGIN = 0.25; // of the view's size, fetched on each side of it
  const ZOOM_BAND = 2; // zoomed in more than this since the last query: ask again
  const COLOR = /^#[0-9a-fA-F]{6}$/;

  const signIn = window.AtriumSignIn;
  const byId = (id) => document.getElementById(id);
  const config = JSON.parse(byId("atrium-viewer-config").textContent);
  const place = /^(.*)\/slides\/([^/]+)\/view\/?$/.exec(location.pathname);
  const apiBase = place ? place[1] : "";
  const slideId = place ? decodeURIComponent(place[2]) : "";
  const slidePath = "/slides/" + encodeURIComponent(slideId);
  const pageUrl = location.origin + location.pathname;

  let token = null;
  let viewer = null;
  let slide = null;

  window.atriumViewerReady = false;
  window.atriumViewerError = null;
  window.atriumViewerWarning = null;

  // ------------------------------------------------------------------ messages

  class ViewerError extends Error {
    constructor(title, detail, options) {
      super(detail);
      this.title = title;
      this.status = (options && options.status) || null;
      this.signIn = Boolean(options && options.signIn);
    }
  }

  function setStatus(text) {
    byId("status").textContent = text;
  }

  function warn(text) {
    window.atriumViewerWarning = text;
    setStatus(text);
  }

  function fail(error) {
    if (window.atriumViewerError) {
      return; // the first failure is the one to explain
    }
    if (!error || typeof error.title !== "string") { // not one of ours: a bug
      error = new ViewerError("The viewer stopped", String((error && error.message) || error));
    }
    window.atriumViewerReady = false;
    window.atriumViewerError = {title: error.title, detail: error.message,
                                status: error.status || null};
    byId("message-title").textContent = error.title;
    byId("message-detail").textContent = error.message;
    byId("sign-in").hidden = !(error.signIn && config.issuer);
    byId("message").hidden = false;
    setStatus("");
  }

  function answerError(status, problem, what) {
    const detail = problem && (problem.detail || problem.title);
    if (status === 401) {
      return new ViewerError("Your sign-in is missing or has expired",
        config.issuer ? "Sign in again to view this slide."
          : "Open the page again with a new token: …/view#token=<token> (atrium token).",
        {status: status, signIn: true});
    }
    if (status === 403) {
      return new ViewerError("You may not view this slide",
        detail || "Your roles do not allow reading slides.", {status: status});
    }
    if (status === 404) {
      return new ViewerError("Slide not found",
        "There is no slide " + slideId + " in your organization: it does not exist, " +
        "was deleted, or belongs to another organization.", {status: status});
    }
    return new ViewerError("The slide could not be loaded",
      what + " answered HTTP " + status + (detail ? ": " + detail : "."), {status: status});
  }

  // ----------------------------------------------------------------------- API

  async function api(path, what, signal) {
    let response;
    try {
      response = await fetch(apiBase + path,
        {headers: {Authorization: "Bearer " + token}, signal: signal});
    } catch (error) {
      if (error.name === "AbortError") {
        throw error;
      }
      throw new ViewerError("Atrium cannot be reached", what + ": " + error.message);
    }
    if (!response.ok) {
      throw answerError(response.status, await response.json().catch(() => null), what);
    }
    return response;
  }

  function tileSource(xml) {
    const doc = new DOMParser().parseFromString(xml, "application/xml");
    const image = doc.documentElement;
    const size = image && image.getElementsByTagNameNS("*", "Size")[0];
    if (!image || image.localName !== "Image" || !size) {
      throw new ViewerError("The slide could not be loaded",
        "Its Deep Zoom descriptor is not valid.");
    }
    return {Image: {
      xmlns: image.namespaceURI || DZI_NS,
      Url: apiBase + slidePath + "/dzi_files/",
      Format: image.getAttribute("Format"),
      Overlap: image.getAttribute("Overlap"),
      TileSize: image.getAttribute("TileSize"),
      Size: {Width: size.getAttribute("Width"), Height: size.getAttribute("Height")},
    }};
  }

  function describe(info) {
    document.title = info.slide_id + " · Atrium";
    byId("slide-name").textContent = info.slide_id;
    const facts = [info.width_pixels + " × " + info.height_pixels + " px"];
    if (info.mpp_x) {
      facts.push(Number(info.mpp_x).toPrecision(3) + " µm/px");
    }
    if (info.pyramid_levels) {
      facts.push(info.pyramid_levels + " levels");
    }
    byId("slide-facts").textContent = facts.join(" · ");
  }

  // ------------------------------------------------------------------- overlay

  const overlay = document.createElementNS(SVG_NS, "svg");
  overlay.setAttribute("class", "annotations");
  overlay.setAttribute("aria-hidden", "true");
  const imageLayer = document.createElementNS(SVG_NS, "g"); // image pixels
  const pixelLayer = document.createElementNS(SVG_NS, "g");
  const micronLayer = document.createElementNS(SVG_NS, "g"); // scaled by 1/mpp
  imageLayer.append(pixelLayer, micronLayer);
  overlay.append(imageLayer);

  function svg(name, attributes) {
    const element = document.createElementNS(SVG_NS, name);
    for (const [key, value] of Object.entries(attributes)) {
      element.setAttribute(key, String(value));
    }
    return element;
  }

  const pointList = (points) => points.map((p) => p.x + "," + p.y).join(" ");

  /** The SVG element of a shape of atrium.annotations.geometry, in its own units. */
  const SHAPES = {
    point: (c) => svg("path", {d: "M" + c.points[0].x + " " + c.points[0].y + "h0"}),
    polyline: (c) => svg("polyline", {points: pointList(c.points)}),
    polygon: (c) => svg("polygon", {points: pointList(c.points)}),
    rectangle: (c) => svg("rect", {x: c.x, y: c.y, width: c.width, height: c.height}),
    // rotation: degrees from the image x axis towards +y (rows go down), as SVG's.
    ellipse: (c) => svg("ellipse", {
      cx: c.center.x, cy: c.center.y, rx: c.radius_x, ry: c.radius_y,
      transform: "rotate(" + (c.rotation || 0) + " " + c.center.x + " " + c.center.y + ")",
    }),
  };

  function shapeGroup(annotation) {
    const coordinates = annotation.coordinates;
    const make = SHAPES[coordinates.type];
    if (!make) {
      return null;
    }
    const group = svg("g", {"class": "shape " + coordinates.type,
                            "data-annotation-id": annotation.id});
    const halo = make(coordinates);
    halo.setAttribute("class", "halo");
    const line = make(coordinates);
    line.setAttribute("class", "line");
    const color = annotation.properties && annotation.properties.color;
    if (typeof color === "string" && COLOR.test(color)) {
      line.style.stroke = color;
    }
    group.append(halo, line);
    return group;
  }

  function draw(annotations) {
    const pixels = [];
    const microns = [];
    for (const annotation of annotations) {
      const group = shapeGroup(annotation);
      if (group) {
        (annotation.coordinates.units === "micrometer" ? microns : pixels).push(group);
      }
    }
    pixelLayer.replaceChildren(...pixels);
    micronLayer.replaceChildren(...microns);
  }

  /** Image pixel (x, y) → CSS pixels of the viewer element, as drawn now. */
  function toElement(x, y) {
    const image = viewer.world.getItemAt(0);
    const point = image.imageToViewportCoordinates(x, y, true);
    return viewer.viewport.pixelFromPoint(point, true);
  }

  function placeOverlay() {
    const image = viewer.world.getItemAt(0);
    if (!image) {
      return;
    }
    const size = image.getContentSize();
    const origin = toElement(0, 0);
    const right = toElement(size.x, 0);
    const down = toElement(0, size.y);
    const matrix = [(right.x - origin.x) / size.x, (right.y - origin.y) / size.x,
                    (down.x - origin.x) / size.y, (down.y - origin.y) / size.y,
                    origin.x, origin.y];
    imageLayer.setAttribute("transform", "matrix(" + matrix.join(" ") + ")");
  }

  // ------------------------------------------------------------ viewport query

  let queryTimer = null;
  let queryController = null;
  let fetched = null; // {box, view, complete}: the region whose annotations are drawn
  let annotationsCurrent = false;

  /** The image region in view (pixels, clamped to the image), grown by `margin`. */
  function visibleRegion(margin) {
    const image = viewer.world.getItemAt(0);
    const size = image.getContentSize();
    const view = image.viewportToImageRectangle(viewer.viewport.getBounds(false))
      .getBoundingBox();
    const x0 = Math.max(0, Math.floor(view.x - view.width * margin));
    const y0 = Math.max(0, Math.floor(view.y - view.height * margin));
    const x1 = Math.min(size.x, Math.ceil(view.x + view.width * (1 + margin)));
    const y1 = Math.min(size.y, Math.ceil(view.y + view.height * (1 + margin)));
    return {x: x0, y: y0, width: Math.max(0, x1 - x0), height: Math.max(0, y1 - y0)};
  }

  const inside = (a, b) => a.x >= b.x && a.y >= b.y && a.x + a.width <= b.x + b.width &&
    a.y + a.height <= b.y + b.height;

  function scheduleQuery() {
    annotationsCurrent = false;
    updateReady();
    clearTimeout(queryTimer);
    queryTimer = setTimeout(() => {
      queryTimer = null;
      query().catch(fail);
    }, QUERY_DELAY_MS);
  }

  async function collect(units, box, found, signal) {
    const base = new URLSearchParams({
      target_type: "slide", target_id: slideId, limit: String(PAGE_SIZE),
      bbox: [box.x, box.y, box.width, box.height].join(","),
    });
    let cursor = null;
    do {
      const params = new URLSearchParams(base);
      if (cursor) {
        params.set("cursor", cursor);
      }
      const response = await api("/annotations?" + params, "The annotation query", signal);
      const page = await response.json();
      for (const item of page.items) {
        const coordinates = item.coordinates;
        if (coordinates && (coordinates.units || "pixel") === units) {
          found.set(item.id, item);
        }
      }
      if (found.size >= MAX_SHAPES) {
        return false;
      }
      cursor = page.next_cursor;
    } while (cursor);
    return true;
  }

  async function query() {
    const view = visibleRegion(0);
    // A move within the margin, at about the same zoom, needs no query: all of the
    // region's annotations are drawn already. Zoomed in further, the view is asked
    // for again (so new annotations appear, and a truncated answer fills in).
    if (fetched && fetched.complete && inside(view, fetched.box) &&
        view.width * ZOOM_BAND >= fetched.view.width) {
      annotationsCurrent = true;
      updateReady();
      return;
    }
    if (queryController) {
      queryController.abort();
    }
    const controller = new AbortController();
    queryController = controller;
    const box = visibleRegion(MARGIN);
    const found = new Map();
    let complete = false;
    let problem = null;
    try {
      complete = await collect("pixel", box, found, controller.signal);
      if (complete && slide.mpp_x && slide.mpp_y) {
        const microns = {x: box.x * slide.mpp_x, y: box.y * slide.mpp_y,
                         width: box.width * slide.mpp_x, height: box.height * slide.mpp_y};
        complete = await collect("micrometer", microns, found, controller.signal);
      }
    } catch (error) {
      if (error.name === "AbortError") {
        return; // a newer query replaced this one
      }
      if (error instanceof ViewerError && [401, 403, 404].includes(error.status)) {
        throw error;
      }
      problem = "Annotations could not be loaded: " + error.message;
    } finally {
      if (queryController === controller) {
        queryController = null;
      }
    }
    if (controller.signal.aborted) {
      return;
    }
    draw(found.values());
    // A failed query is asked again at the next move, not taken as complete.
    fetched = {box: box, view: view, complete: complete && problem === null};
    if (problem) {
      warn(problem);
    } else {
      setStatus(complete ? found.size + " annotation" + (found.size === 1 ? "" : "s")
        : "Showing " + found.size + " annotations of this region; zoom in to see all.");
    }
    annotationsCurrent = queryTimer === null;
    updateReady();
  }

  // --------------------------------------------------------------------- ready

  let readyTicket = 0;

  function settled() {
    return !window.atriumViewerError && viewer !== null && viewer.world.getItemCount() > 0 &&
      viewer.getFullyLoaded() && !viewer.isAnimating() && annotationsCurrent &&
      queryTimer === null && queryController === null;
  }

  /** Ready once settled through two frames: the tiles and outlines are on screen. */
  function updateReady() {
    const ticket = ++readyTicket;
    if (!settled()) {
      window.atriumViewerReady = false;
      return;
    }
    requestAnimationFrame(() => requestAnimationFrame(() => {
      if (ticket === readyTicket && settled()) {
        window.atriumViewerReady = true;
      }
    }));
  }

  // ---------------------------------------------------------------------- main

  function open(source) {
    viewer = OpenSeadragon({
      element: byId("viewer"),
      tileSources: source,
      loadTilesWithAjax: true,
      ajaxHeaders: {Authorization: "Bearer " + token},
      drawer: "canvas",
      showNavigationControl: false,
      maxZoomPixelRatio: 4,
      timeout: 60000,
    });
    viewer.canvas.append(overlay);
    viewer.addHandler("open", () => {
      const scale = slide.mpp_x && slide.mpp_y ? [1 / slide.mpp_x, 1 / slide.mpp_y] : [1, 1];
      micronLayer.setAttribute("transform", "scale(" + scale.join(" ") + ")");
      placeOverlay();
      scheduleQuery();
    });
    viewer.addHandler("open-failed", (event) => {
      fail(new ViewerError("The slide could not be loaded", String(event.message)));
    });
    viewer.addHandler("tile-load-failed", (event) => {
      const status = event.tileRequest ? event.tileRequest.status : 0;
      if ([401, 403, 404].includes(status)) {
        fail(answerError(status, null, "A tile"));
      } else {
        warn("Some tiles could not be loaded (" + (status ? "HTTP " + status
          : event.message) + ").");
      }
    });
    viewer.addHandler("update-viewport", () => {
      placeOverlay();
      if (!window.atriumViewerReady) {
        updateReady();
      }
    });
    viewer.addHandler("viewport-change", scheduleQuery);
    viewer.addHandler("fully-loaded-change", updateReady);
    viewer.addHandler("animation-finish", updateReady);
  }

  async function main() {
    if (!place) {
      throw new ViewerError("Slide not found", "This address names no slide.");
    }
    const address = signIn.readAddress();
    if (address.token) {
      token = address.token;
    } else if (address.answer) {
      token = await signIn.finish(config, address.answer);
    } else if (config.issuer) {
      setStatus("Signing in…");
      await signIn.start(config, pageUrl);
      return;
    } else {
      throw new ViewerError("Sign-in needed",
        "This server has no sign-in page (no OIDC issuer is configured). Open the viewer " +
        "with a token: …/view#token=<token>, as `atrium token` prints it.");
    }
    const [info, dzi] = await Promise.all([
      api(slidePath, "The slide").then((response) => response.json()),
      api(slidePath + "/dzi", "The Deep Zoom descriptor").then((response) => response.text()),
    ]);
    slide = info;
    describe(info);
    setStatus("Loading tiles…");
    open(tileSource(dzi));
  }

  // The same page opened again with another #token= is only a change of fragment,
  // which reloads nothing: start over with the new token.
  window.addEventListener("hashchange", () => {
    if (new URLSearchParams(location.hash.replace(/^#/, "")).has("token")) {
      location.reload();
    }
  });

  byId("sign-in").addEventListener("click", () => {
    signIn.start(config, pageUrl).catch((error) => {
      window.atriumViewerError = null;
      fail(error);
    });
  });

  window.atriumViewer = {
    get viewer() {
      return viewer;
    },
    get slide() {
      return slide;
    },
    /** Image pixel (x, y) → CSS pixels from the window's top-left corner. */
    imageToClient(x, y) {
      const point = toElement(x, y);
      const frame = viewer.element.getBoundingClientRect();
      return {x: frame.left + point.x, y: frame.top + point.y};
    },
    drawnAnnotationIds() {
      return Array.from(overlay.querySelectorAll("[data-annotation-id]"),
        (group) => group.getAttribute("data-annotation-id"));
    },
  };

  main().catch(fail);
})();
