// Atrium's OHIF extension: measurements drawn in OHIF are kept in Atrium's
// /api/annotations, and a study's annotations are drawn when it opens.
//
// /viewer/index.html loads this file before app-config.js, which adds
// window.atriumOhifExtension to window.config.extensions: OHIF takes an extension
// given as an object at run time (its module loader returns non-strings as they
// are), so OHIF's published build needs no rebuild. See docs/VIEWER.md.
//
// What is written: one annotation per cornerstone annotation, on the instance (and
// frame) it was drawn on, in image pixel coordinates ((0, 0) is the top-left corner
// of the top-left pixel, as in DICOM and in cornerstone's worldToImageCoords). A
// drawing is created when it is completed, updated (If-Match) once a change has
// settled, soft-deleted when it is removed. A 409 (someone else changed it) is
// shown to the user and resolved by taking the stored version.
(function () {
  "use strict";

  var ANNOTATIONS = "/api/annotations";
  var SETTLE_MS = 300;
  var state = {
    services: null,
    commands: null,
    extensionManager: null,
    saved: {},      // cornerstone annotation UID -> {id, version, body}
    timers: {},
    chains: {},     // writes of one annotation run one after the other
    studies: {},    // StudyInstanceUID -> promise of {SOPInstanceUID: Atrium instance id}
    annotations: {},  // StudyInstanceUID -> promise of the study's annotations in Atrium
    firstImage: null,
    hydrated: {},   // Atrium annotation id -> cornerstone annotation UID
    pending: 0,     // writes under way (tests wait for 0)
    errors: [],
    listening: false,
  };
  // For people and tests looking at a running viewer.
  window.atriumOhif = state;

  // ------------------------------------------------------------------ HTTP

  function authorization() {
    var auth = state.services && state.services.userAuthenticationService;
    var header = auth && auth.getAuthorizationHeader && auth.getAuthorizationHeader();
    return header || {};
  }

  function call(method, url, body, extra) {
    var headers = Object.assign({ Accept: "application/json" }, authorization(), extra || {});
    var init = { method: method, headers: headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(url, init).then(function (response) {
      if (response.status === 204) { return { response: response, json: null }; }
      return response.json().catch(function () { return null; }).then(function (json) {
        return { response: response, json: json };
      });
    });
  }

  function ok(answer, what) {
    if (!answer.response.ok) {
      var detail = (answer.json && (answer.json.detail || answer.json.title)) || "";
      throw new Error(what + ": " + answer.response.status + " " + detail);
    }
    return answer.json;
  }

  function everyPage(url) {
    var items = [];
    var separator = url.indexOf("?") < 0 ? "?" : "&";
    function page(address) {
      return call("GET", address).then(function (answer) {
        var json = ok(answer, "GET " + url);
        items = items.concat(json.items);
        if (!json.next_cursor) { return items; }
        return page(url + separator + "cursor=" + encodeURIComponent(json.next_cursor));
      });
    }
    return page(url);
  }

  function serially(uid, work) {
    state.pending += 1;
    var next = (state.chains[uid] || Promise.resolve()).then(work).catch(function (error) {
      state.errors.push(String(error && error.message || error));
      notify("Atrium could not keep the measurement", String(error && error.message || error),
             "error");
    }).then(function () { state.pending -= 1; });
    state.chains[uid] = next;
    return next;
  }

  function notify(title, message, type) {
    var service = state.services && state.services.uiNotificationService;
    if (service && service.show) {
      service.show({ title: title, message: message, type: type || "info", duration: 5000 });
    }
  }

  // ------------------------------------------------------- instances in Atrium

  function instanceIds(studyUid) {
    if (!state.studies[studyUid]) {
      state.studies[studyUid] = everyPage("/api/studies?study_instance_uid=" +
                                          encodeURIComponent(studyUid))
        .then(function (studies) {
          if (!studies.length) { return { id: null, series: [] }; }
          return call("GET", "/api/studies/" + studies[0].id).then(function (answer) {
            return { id: studies[0].id, series: ok(answer, "GET study").series };
          });
        })
        .then(function (study) {
          return Promise.all(study.series.map(function (one) {
            return everyPage("/api/series/" + one.id + "/instances?limit=1000");
          })).then(function (lists) {
            // SOP Instance UID -> Atrium id; the study's own id out of the way of UIDs.
            var ids = Object.defineProperty({}, "studyId", { value: study.id });
            lists.forEach(function (list) {
              list.forEach(function (item) { ids[item.sop_instance_uid] = item.id; });
            });
            return ids;
          });
        });
      state.studies[studyUid].catch(function () { delete state.studies[studyUid]; });
    }
    return state.studies[studyUid];
  }

  // ------------------------------------------------------------ geometry

  function cs() { return window.cornerstone; }
  function tools() { return window.cornerstoneTools; }

  function round(value) { return Math.round(value * 1000) / 1000; }

  function toImage(imageId, world) {
    var point = cs().utilities.worldToImageCoords(imageId, world);
    return { x: round(point[0]), y: round(point[1]) };
  }

  function toWorld(imageId, point) {
    return cs().utilities.imageToWorldCoords(imageId, [point.x, point.y]);
  }

  function distance(a, b) { return Math.hypot(a.x - b.x, a.y - b.y); }

  function frameOf(imageId) {
    var match = /\/frames\/(\d+)/.exec(imageId);
    var frame = match ? Number(match[1]) : 1;
    var multiframe = cs().metaData.get("multiframeModule", imageId) || {};
    return (multiframe.NumberOfFrames || 1) > 1 || frame > 1 ? frame : null;
  }

  // cornerstone tool -> (handles in world coordinates -> Atrium shape), and back.
  var SHAPES = {
    Length: {
      shape: function (points) { return { type: "polyline", points: points }; },
      handles: function (c) { return c.type === "polyline" && c.points.length === 2 ? c.points : null; },
    },
    ArrowAnnotate: {
      shape: function (points) { return { type: "polyline", points: points }; },
      handles: function (c) { return c.type === "polyline" && c.points.length === 2 ? c.points : null; },
    },
    Bidirectional: {  // long axis, then short axis: four points
      shape: function (points) { return { type: "polyline", points: points }; },
      handles: function (c) { return c.type === "polyline" && c.points.length === 4 ? c.points : null; },
    },
    RectangleROI: {
      shape: function (points) {
        var xs = points.map(function (p) { return p.x; });
        var ys = points.map(function (p) { return p.y; });
        var x = Math.min.apply(null, xs), y = Math.min.apply(null, ys);
        return { type: "rectangle", x: x, y: y, width: round(Math.max.apply(null, xs) - x),
                 height: round(Math.max.apply(null, ys) - y) };
      },
      handles: function (c) {
        if (c.type !== "rectangle") { return null; }
        return [{ x: c.x, y: c.y }, { x: c.x + c.width, y: c.y },
                { x: c.x, y: c.y + c.height }, { x: c.x + c.width, y: c.y + c.height }];
      },
    },
    EllipticalROI: {  // handles: top, bottom, left, right
      shape: function (points) {
        var cx = (points[2].x + points[3].x) / 2, cy = (points[0].y + points[1].y) / 2;
        return { type: "ellipse", center: { x: round(cx), y: round(cy) },
                 radius_x: round(distance(points[2], points[3]) / 2),
                 radius_y: round(distance(points[0], points[1]) / 2) };
      },
      handles: function (c) {
        if (c.type !== "ellipse") { return null; }
        var x = c.center.x, y = c.center.y;
        return [{ x: x, y: y - c.radius_y }, { x: x, y: y + c.radius_y },
                { x: x - c.radius_x, y: y }, { x: x + c.radius_x, y: y }];
      },
    },
    CircleROI: {  // handles: centre, a point on the circle
      shape: function (points) {
        var r = round(distance(points[0], points[1]));
        return { type: "ellipse", center: points[0], radius_x: r, radius_y: r };
      },
      handles: function (c) {
        if (c.type !== "ellipse" || c.radius_x !== c.radius_y) { return null; }
        return [c.center, { x: c.center.x + c.radius_x, y: c.center.y }];
      },
    },
    PlanarFreehandROI: {
      shape: function (points, annotation) {
        var closed = annotation.data.contour ? annotation.data.contour.closed : true;
        return { type: closed && points.length >= 3 ? "polygon" : "polyline", points: points };
      },
      handles: function () { return null; },  // drawn back from contours: not yet
      contour: true,
    },
  };

  function worldPoints(annotation, rule) {
    if (rule.contour) {
      return (annotation.data.contour && annotation.data.contour.polyline) || [];
    }
    return (annotation.data.handles && annotation.data.handles.points) || [];
  }

  // The body Atrium keeps for a cornerstone annotation, or null if it is not ours
  // to keep (a tool without a shape, or an image Atrium does not know).
  function describe(annotation) {
    var meta = annotation.metadata || {};
    var rule = SHAPES[meta.toolName];
    var imageId = meta.referencedImageId;
    if (!rule || !imageId) { return null; }
    var points = worldPoints(annotation, rule).map(function (p) { return toImage(imageId, p); });
    if (points.length < 2) { return null; }
    var coordinates = rule.shape(points, annotation);
    var frame = frameOf(imageId);
    if (frame) { coordinates.frame = frame; }
    var common = cs().metaData.get("generalSeriesModule", imageId) || {};
    var sop = cs().metaData.get("sopCommonModule", imageId) || {};
    var label = annotation.data.label || annotation.data.text || meta.toolName;
    return {
      studyUid: common.studyInstanceUID, sopUid: sop.sopInstanceUID,
      label: String(label).slice(0, 255), coordinates: coordinates,
      properties: { source: "ohif", ohif_tool: meta.toolName },
    };
  }

  function same(a, b) { return JSON.stringify(a) === JSON.stringify(b); }

  // ---------------------------------------------------------------- writes

  function save(uid) {
    return serially(uid, function () {
      var annotation = tools().annotation.state.getAnnotation(uid);
      if (!annotation) { return null; }
      var body = describe(annotation);
      var known = state.saved[uid];
      if (!body || (known && same(known.body, body))) { return null; }
      if (known) { return update(uid, known, body); }
      return instanceIds(body.studyUid).then(function (ids) {
        var target = ids[body.sopUid];
        if (!target) { throw new Error("the image is not among the study's in Atrium"); }
        return call("POST", ANNOTATIONS, {
          annotation_type: "dicom", target_type: "instance", target_id: target,
          label: body.label, coordinates: body.coordinates, properties: body.properties,
        }).then(function (answer) {
          var json = ok(answer, "POST " + ANNOTATIONS);
          state.saved[uid] = { id: json.id, version: json.version, body: body };
          state.hydrated[json.id] = uid;
        });
      });
    });
  }

  function update(uid, known, body) {
    return call("PUT", ANNOTATIONS + "/" + known.id, {
      label: body.label, coordinates: body.coordinates, properties: body.properties,
    }, { "If-Match": '"' + known.version + '"' }).then(function (answer) {
      if (answer.response.status === 409) {
        notify("Measurement changed elsewhere",
               "Someone else edited this measurement; showing their version.", "warning");
        return reload(uid, known.id);
      }
      var json = ok(answer, "PUT annotation");
      state.saved[uid] = { id: known.id, version: json.version, body: body };
    });
  }

  function reload(uid, id) {
    return call("GET", ANNOTATIONS + "/" + id).then(function (answer) {
      var json = ok(answer, "GET annotation");
      var annotation = tools().annotation.state.getAnnotation(uid);
      if (!annotation) { return; }
      var rule = SHAPES[annotation.metadata.toolName];
      var points = rule && rule.handles(json.coordinates);
      if (points) {
        annotation.data.handles.points = points.map(function (p) {
          return toWorld(annotation.metadata.referencedImageId, p);
        });
        annotation.invalidated = true;
        render();
      }
      var body = describe(annotation);
      state.saved[uid] = { id: id, version: json.version, body: body };
    });
  }

  function remove(uid) {
    var known = state.saved[uid];
    if (!known) { return null; }
    return serially(uid, function () {
      return call("DELETE", ANNOTATIONS + "/" + known.id, undefined,
                  { "If-Match": '"' + state.saved[uid].version + '"' })
        .then(function (answer) {
          if (answer.response.status !== 404) { ok(answer, "DELETE annotation"); }
          delete state.hydrated[known.id];
          delete state.saved[uid];
        });
    });
  }

  function settle(uid) {
    clearTimeout(state.timers[uid]);
    state.timers[uid] = setTimeout(function () { delete state.timers[uid]; save(uid); },
                                   SETTLE_MS);
  }

  // ------------------------------------------------------------- drawing back

  function render() {
    var engines = cs().getRenderingEngines ? cs().getRenderingEngines() : [];
    engines.forEach(function (engine) { engine.render(); });
  }

  function draw(stored, imageId) {
    var tool = stored.properties && stored.properties.ohif_tool;
    var rule = SHAPES[tool];
    if (!rule && stored.coordinates) {  // from elsewhere (API, SR import): a like shape
      var c = stored.coordinates;
      tool = c.type === "rectangle" ? "RectangleROI" : c.type === "ellipse" ? "EllipticalROI"
        : c.type === "polyline" && c.points.length === 2 ? "Length" : null;
      rule = SHAPES[tool];
    }
    var points = rule && rule.handles(stored.coordinates);
    if (!points || state.hydrated[stored.id]) { return; }
    var plane = cs().metaData.get("imagePlaneModule", imageId) || {};
    var row = plane.rowCosines || [1, 0, 0], column = plane.columnCosines || [0, 1, 0];
    var normal = [row[1] * column[2] - row[2] * column[1], row[2] * column[0] - row[0] * column[2],
                  row[0] * column[1] - row[1] * column[0]];
    var uid = "atrium-" + stored.id;
    var annotation = {
      annotationUID: uid, highlighted: false, invalidated: true, isLocked: false,
      isVisible: true,
      metadata: {
        toolName: tool, referencedImageId: imageId, FrameOfReferenceUID: plane.frameOfReferenceUID,
        viewPlaneNormal: normal, viewUp: column.map(function (v) { return -v; }),
      },
      data: {
        label: stored.label, text: tool === "ArrowAnnotate" ? stored.label : undefined,
        handles: {
          points: points.map(function (p) { return toWorld(imageId, p); }),
          activeHandleIndex: null,
          textBox: { hasMoved: false, worldPosition: [0, 0, 0],
                     worldBoundingBox: { topLeft: [0, 0, 0], topRight: [0, 0, 0],
                                         bottomLeft: [0, 0, 0], bottomRight: [0, 0, 0] } },
        },
        cachedStats: {},
      },
    };
    state.hydrated[stored.id] = uid;
    state.saved[uid] = { id: stored.id, version: stored.version, body: null };
    tools().annotation.state.addAnnotation(annotation, plane.frameOfReferenceUID);
    // What describe() gives for it now: unchanged means nothing to write.
    state.saved[uid].body = describe(annotation);
  }

  function imageIdsOf(displaySet) {
    var source = state.extensionManager && state.extensionManager.getActiveDataSource()[0];
    var ids = {};
    (displaySet.instances || []).forEach(function (instance) {
      var imageId = instance.imageId;
      if (!imageId && source && source.getImageIdsForInstance) {
        imageId = source.getImageIdsForInstance({ instance: instance });
      }
      if (imageId) { ids[instance.SOPInstanceUID] = imageId; }
    });
    return ids;
  }

  // The first image loaded on the page (or a few seconds): a study's annotations are
  // read after it rather than among the requests for the study's metadata and frames.
  var FIRST_IMAGE_WAIT_MS = 5000;

  function afterFirstImage() {
    if (!state.firstImage) {
      state.firstImage = new Promise(function (resolve) {
        var events = cs().Enums && cs().Enums.Events;
        var timer = setTimeout(done, FIRST_IMAGE_WAIT_MS);
        function done() {
          clearTimeout(timer);
          if (events) { cs().eventTarget.removeEventListener(events.IMAGE_LOADED, done); }
          resolve();
        }
        if (events) { cs().eventTarget.addEventListener(events.IMAGE_LOADED, done); }
      });
    }
    return state.firstImage;
  }

  // Every live annotation of the study in Atrium (on it, its series or its instances)
  // with the instances' ids: one query, paged, however many images the study has.
  function studyAnnotations(studyUid) {
    if (!state.annotations[studyUid]) {
      state.annotations[studyUid] = afterFirstImage().then(function () {
        return instanceIds(studyUid);
      }).then(function (ids) {
        if (!ids.studyId) { return { ids: ids, items: [] }; }
        return everyPage(ANNOTATIONS + "?study_id=" + ids.studyId +
                         "&annotation_type=dicom&limit=1000")
          .then(function (items) { return { ids: ids, items: items }; });
      });
      state.annotations[studyUid].catch(function () { delete state.annotations[studyUid]; });
    }
    return state.annotations[studyUid];
  }

  function hydrate(displaySets) {
    displaySets.forEach(function (displaySet) {
      var studyUid = displaySet.StudyInstanceUID;
      if (!studyUid || !displaySet.instances) { return; }
      var imageIds = imageIdsOf(displaySet);
      studyAnnotations(studyUid).then(function (found) {
        var sopOf = {};
        Object.keys(found.ids).forEach(function (sopUid) { sopOf[found.ids[sopUid]] = sopUid; });
        found.items.forEach(function (stored) {
          var imageId = stored.target_type === "instance" && imageIds[sopOf[stored.target_id]];
          if (imageId) { draw(stored, imageId); }
        });
      }).then(render).catch(function (error) {
        state.errors.push(String(error && error.message || error));
      });
    });
  }

  // ------------------------------------------------------- signed in already

  // The user this tab signed in as, if its token is still good for a while:
  // app-config.js gives OHIF's OIDC client a store in sessionStorage, but OHIF only
  // learns of a user from a sign-in, so every full load of a page signed in again.
  function keptUser() {
    var oidc = window.config && window.config.oidc && window.config.oidc[0];
    var store = oidc && oidc.userStore;
    if (!store || !store.prefix) { return null; }
    try {
      var text = window.sessionStorage.getItem(
        store.prefix + "user:" + oidc.authority + ":" + oidc.client_id);
      var user = text && JSON.parse(text);
      // Not one about to expire: OHIF would send it before the client renews it.
      var left = user && user.access_token && user.expires_at - Date.now() / 1000;
      return left > 30 ? user : null;
    } catch (error) {
      return null;
    }
  }

  // OHIF turns authentication on (set({enabled: true})) and, with no user in its
  // state, sends the browser to the issuer on its next render. Giving it the kept
  // user in the same turn means that render already has one. The OIDC client loads
  // the same user from its store and renews it as after a sign-in.
  function restoreUser(auth) {
    if (!auth || typeof auth.set !== "function" || auth.atriumRestores) { return; }
    var set = auth.set;
    auth.atriumRestores = true;
    auth.set = function (change) {
      var result = set.apply(auth, arguments);
      if (change && change.enabled && !auth.getUser()) {
        var user = keptUser();
        if (user) { auth.setUser(user); }
      }
      return result;
    };
  }

  // ---------------------------------------------------------------- wiring

  function listen() {
    if (state.listening || !cs() || !tools()) { return; }
    state.listening = true;
    var events = tools().Enums.Events;
    var target = cs().eventTarget;
    target.addEventListener(events.ANNOTATION_COMPLETED, function (event) {
      save(event.detail.annotation.annotationUID);
    });
    target.addEventListener(events.ANNOTATION_MODIFIED, function (event) {
      var uid = event.detail.annotation.annotationUID;
      if (state.saved[uid]) { settle(uid); }
    });
    // A removal the user asked for is the measurement service's MEASUREMENT_REMOVED;
    // cornerstone's ANNOTATION_REMOVED also fires when OHIF clears its measurements
    // on leaving a study, which must not delete anything in Atrium.
    var measurements = state.services.measurementService;
    measurements.subscribe(measurements.EVENTS.MEASUREMENT_REMOVED, function (event) {
      var measurement = event && event.measurement;
      remove(typeof measurement === "string" ? measurement : measurement && measurement.uid);
    });
  }

  window.atriumOhifExtension = {
    id: "@atrium/extension-annotations",
    version: "0.1.0",
    preRegistration: function (args) {
      state.services = args.servicesManager.services;
      state.commands = args.commandsManager;
      state.extensionManager = args.extensionManager;
      restoreUser(state.services.userAuthenticationService);
    },
    onModeEnter: function () {
      listen();
      var displaySets = state.services.displaySetService;
      state.subscription = displaySets.subscribe(displaySets.EVENTS.DISPLAY_SETS_ADDED,
                                                 function (event) {
        hydrate(event.displaySetsAdded || []);
      });
      hydrate(displaySets.getActiveDisplaySets ? displaySets.getActiveDisplaySets() : []);
    },
    onModeExit: function () {
      // OHIF clears its measurements on the way out; what was drawn is in Atrium.
      if (state.subscription) { state.subscription.unsubscribe(); }
      state.subscription = null;
      state.saved = {};
      state.hydrated = {};
      // Read again when a study is opened again: others may have changed them.
      state.annotations = {};
    },
  };
})();
