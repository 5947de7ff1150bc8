// TEST SCHEMA of the Convex test server: Ferry's tables plus one table with
// validators (`strict_items`), where a record that breaks them must be
// parked alone. Other tables are schemaless, as in a project without a
// schema for them.
import { defineSchema, defineTable } from "convex/server";
import { v } from "convex/values";
import { ferryTables } from "./ferrySchema";

export default defineSchema(
  {
    ...ferryTables,
    strict_items: defineTable({
      id: v.int64(),
      name: v.string(),
      qty: v.float64(),
    }),
  },
  { strictTableNameTypes: false },
);
