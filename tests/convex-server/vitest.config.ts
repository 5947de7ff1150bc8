import { defineConfig } from "vitest/config";

export default defineConfig({
  test: { environment: "node", include: ["ferry.test.ts", "export.test.ts"] },
});
