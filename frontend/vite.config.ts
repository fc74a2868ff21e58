// Built into dist/, which Django serves: index.html at / (apps.common.webapp) and the hashed assets
// under /static/app/ (STATICFILES_DIRS, collected by `make run`). No CDN: everything is bundled.
import react from "@vitejs/plugin-react";
import { defineConfig } from "vitest/config";

export default defineConfig({
  plugins: [react()],
  base: "/static/app/",
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false },
  test: { environment: "jsdom", include: ["src/**/*.test.ts", "src/**/*.test.tsx"], setupFiles: ["src/test-setup.ts"] },
});
