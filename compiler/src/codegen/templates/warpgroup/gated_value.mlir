              %{{o}}g = llvm.extractvalue %acc[{{gate}}] : {{acc}}
              %{{o}}u = llvm.extractvalue %acc[{{up}}] : {{acc}}
{{rounded}}
              %{{o}}v = scf.execute_region -> f32 {
              %g = arith.addf %{{o}}gv, %zero : f32
              %u = arith.addf %{{o}}uv, %zero : f32
{{act}}
              scf.yield %res : f32
              }
