// Scenes in this browser's IndexedDB: one record per scene (no size limit short of the disk's), plus which one
// is open. Scenes kept in localStorage by earlier versions of the page move here once.

const DB_NAME = "rpserve";
const SCENES = "scenes";
const META = "meta";
const LEGACY_KEY = "rpserve.scenes";

export class StorageFull extends Error {}

function opened() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => {
      request.result.createObjectStore(SCENES, { keyPath: "id" });
      request.result.createObjectStore(META);
    };
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

function done(transaction) {
  return new Promise((resolve, reject) => {
    transaction.oncomplete = () => resolve();
    const fail = () => {
      const error = transaction.error;
      reject(error && error.name === "QuotaExceededError" ? new StorageFull(error.message) : error);
    };
    transaction.onerror = fail;
    transaction.onabort = fail;
  });
}

function all(store) {
  return new Promise((resolve, reject) => {
    const request = store.getAll();
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

function get(store, key) {
  return new Promise((resolve, reject) => {
    const request = store.get(key);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

export class SceneStore {
  constructor(db) {
    this.db = db;
  }

  static async open() {
    const store = new SceneStore(await opened());
    await store.migrate();
    return store;
  }

  // { scenes: {id: scene}, current: id | undefined }
  async load() {
    const transaction = this.db.transaction([SCENES, META]);
    const scenes = await all(transaction.objectStore(SCENES));
    const current = await get(transaction.objectStore(META), "current");
    return { scenes: Object.fromEntries(scenes.map((s) => [s.id, s])), current };
  }

  // Writes a scene (and makes it the open one); rejects with StorageFull when the browser refuses the space.
  async put(scene, current = scene.id) {
    const transaction = this.db.transaction([SCENES, META], "readwrite");
    const finished = done(transaction);
    try {
      transaction.objectStore(SCENES).put(scene);
      transaction.objectStore(META).put(current, "current");
    } catch (error) {
      transaction.abort();
      await finished.catch(() => {});
      throw error.name === "QuotaExceededError" ? new StorageFull(error.message) : error;
    }
    return finished;
  }

  async remove(id) {
    const transaction = this.db.transaction(SCENES, "readwrite");
    transaction.objectStore(SCENES).delete(id);
    return done(transaction);
  }

  async migrate() {
    let legacy;
    try {
      legacy = JSON.parse(localStorage.getItem(LEGACY_KEY));
    } catch {
      return;
    }
    if (!legacy || !legacy.scenes) return;
    for (const scene of Object.values(legacy.scenes)) await this.put(scene, legacy.current);
    localStorage.removeItem(LEGACY_KEY);
  }
}
