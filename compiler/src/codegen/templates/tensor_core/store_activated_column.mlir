{{rounded}}
            %{{o}}a = scf.execute_region -> f32 {
            %g = arith.addf %{{o}}gv, %zero : f32
            %u = arith.addf %{{o}}uv, %zero : f32
{{act}}
            scf.yield %res : f32
            }
            %{{o}}k = arith.constant {{c}} : index
            %{{o}}col = arith.addi %oc0, %{{o}}k : index
            %{{o}}ok = arith.cmpi ult, %{{o}}col, %{{p}}cF : index
            scf.if %{{o}}ok {
              %{{o}}at = arith.addi %{{r}}base, %{{o}}col : index
              %{{o}}v = arith.truncf %{{o}}a : f32 to bf16
              memref.store %{{o}}v, %dst[%{{o}}at] : memref<?xbf16>
            }
