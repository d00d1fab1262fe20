        %cug = arith.constant {{groups}} : index
        %uwi = arith.addi %gwi, %cug : index
        %uw = memref.load %hid[%uwi] : memref<?xvector<8xbf16>>
        %ux = arith.extf %uw : vector<8xbf16> to vector<8xf32>
        %cf = arith.constant {{f}} : index
